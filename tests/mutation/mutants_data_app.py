"""Mutants of the data pipeline (datasets, transforms, samplers, loader) and the app (checkpoints, config, training loop).

Host-side Python: no kernel body, so each runs the same way with the simulator on or off.
See catalogue.py for the fields.
"""

from mutant import m, ms  # noqa: F401

DATA_APP_MUTANTS = []
