"""The application: the ``minicbam`` command, the training loop, its configuration and
checkpoints, plots and the gradient-check table. Built only on the public library."""
