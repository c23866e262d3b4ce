"""Settings of a training run: the ``TrainConfig`` dataclass, its choices and ``UserError``.

``UserError`` marks a mistake in the user's settings or files (unknown names, missing data,
unreadable checkpoints); the CLI prints it as a one-line message without a traceback.
"""

import dataclasses
import math
import os

import minicbam as mc
from minicbam.device import cuda_unavailable_reason

MODELS = ("digits-cnn", "resnet18", "resnet34", "resnet50")
ATTENTIONS = ("none", "se", "cam", "sam", "cbam")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")
DEVICES = ("cpu", "cuda")


class UserError(Exception):
    """A mistake in the user's settings or files; the CLI prints it without a traceback."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; the defaults train a CBAM CNN on the 8x8 digits."""

    model: str = "digits-cnn"
    attention: str = "cbam"
    dataset: str = "digits"
    data_dir: str = "data"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    step_size: int = 0  # StepLR period; 0 -> a third of the epochs
    gamma: float = 0.1  # StepLR factor
    label_smoothing: float = 0.1  # held-out digits accuracy was higher with it than without
    device: str = "cpu"
    seed: int = 0
    out: str = ""  # "" -> runs/<model>-<attention>-<dataset>
    limit_train: int = 0  # 0 -> the whole training set; else a fixed random subset
    limit_test: int = 0

    def validate(self):
        """Raise ``UserError`` naming the first bad setting."""
        check_choice("model", self.model, MODELS)
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("device", self.device, DEVICES)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "step_size", "limit_train", "limit_test", "weight_decay"):
            if getattr(self, name) < 0:
                raise UserError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_epochs >= self.epochs and self.scheduler != "none":
            raise UserError(
                f"--warmup-epochs ({self.warmup_epochs}) must be smaller than --epochs "
                f"({self.epochs})"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        return self

    def out_dir(self):
        return self.out or os.path.join("runs", f"{self.model}-{self.attention}-{self.dataset}")


def _flag(name):
    return name.replace("_", "-")


def check_choice(name, value, choices):
    """Raise ``UserError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def check_device(device):
    """Raise ``UserError`` if ``device`` is "cuda" and no usable GPU is found."""
    if device == "cuda" and not mc.cuda_is_available():
        reason = cuda_unavailable_reason()
        raise UserError(f"--device cuda: no usable GPU ({reason}); use --device cpu")
