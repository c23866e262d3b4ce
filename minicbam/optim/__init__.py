"""Optimizers, learning-rate schedules and gradient clipping: compositions of minicbam ops.

``SGD``, ``Adam``, ``AdamW`` (optimizer.py, sgd.py, adam.py) update parameters;
``lr_scheduler`` holds ``StepLR``, ``CosineAnnealingLR``, ``LinearLR`` and ``SequentialLR``;
``clip_grad_norm_`` and ``clip_grad_value_`` (clip.py) rescale gradients.
"""

from minicbam.optim import lr_scheduler
from minicbam.optim.adam import Adam, AdamW
from minicbam.optim.clip import clip_grad_norm_, clip_grad_value_
from minicbam.optim.optimizer import Optimizer
from minicbam.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "clip_grad_norm_",
    "clip_grad_value_",
    "lr_scheduler",
]
