"""Builders of a training run's parts from a ``TrainConfig``: datasets, model, optimizer, schedule.

train_set, test_set, info = make_datasets(config)
model = make_model(config.model, config.attention, info.num_classes, info.in_channels)
"""

import dataclasses
import os

import numpy as np

from minicbam import models, optim
from minicbam.app.config import ATTENTIONS, MODELS, UserError, check_choice
from minicbam.data import CIFAR10, MNIST, Digits, FashionMNIST, Subset, transforms

# ------------------------------------------------------------------------------ data


@dataclasses.dataclass
class DataInfo:
    in_channels: int
    size: int
    num_classes: int
    classes: tuple


def _augmentation(dataset):
    # 8x8 digits are too small to crop; MNIST-style digits must not be flipped.
    if dataset == "cifar10":
        return transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        )
    if dataset in ("mnist", "fashion-mnist"):
        return transforms.RandomCrop(28, padding=2)
    return None


def _load_split(dataset, data_dir, train, transform, seed):
    if dataset == "digits":
        return Digits("train" if train else "test", transform=transform, seed=seed)
    if not os.path.isdir(data_dir):
        what = "is not a folder" if os.path.exists(data_dir) else "does not exist"
        raise UserError(
            f"data directory {data_dir!r} {what}; pass --data-dir DIR holding the "
            f"{dataset} files ({_expected_files(dataset)})"
        )
    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "cifar10": CIFAR10}[dataset]
    try:
        return cls(data_dir, train=train, transform=transform, seed=seed)
    except FileNotFoundError as e:
        raise UserError(f"{e}; pass --data-dir DIR") from None
    except ValueError as e:  # damaged files: truncated, wrong header, labels out of range
        raise UserError(f"{dataset} files in {data_dir!r} are damaged: {e}") from None


def _expected_files(dataset):
    if dataset == "cifar10":
        return "data_batch_1.bin .. data_batch_5.bin, test_batch.bin, binary version"
    return (
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, optionally .gz"
    )


def _limit(dataset, n, seed):
    if not n or n >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng([seed, n]).permutation(len(dataset))[:n])
    return Subset(dataset, rows.tolist())


def make_datasets(config, train=True, augment=True):
    """(train, test, DataInfo); ``train=False`` skips loading the training split and
    ``augment=False`` leaves its images as they are (for evaluating on it)."""
    augment = _augmentation(config.dataset) if augment else None
    train_set = None
    if train:
        train_set = _load_split(config.dataset, config.data_dir, True, augment, config.seed)
        train_set = _limit(train_set, config.limit_train, config.seed)
    test_set = _load_split(config.dataset, config.data_dir, False, None, config.seed)
    test_set = _limit(test_set, config.limit_test, config.seed)
    base = test_set.dataset if isinstance(test_set, Subset) else test_set
    _, channels, size, _ = base.data.shape
    return train_set, test_set, DataInfo(channels, size, len(base.classes), tuple(base.classes))


# ----------------------------------------------------------------------------- model


def make_model(name, attention, num_classes, in_channels):
    """A fresh model (initialised from minicbam's generator)."""
    check_choice("model", name, MODELS)
    check_choice("attention", attention, ATTENTIONS)
    attn = None if attention == "none" else attention
    if name == "digits-cnn":
        return models.DigitsCNN(num_classes=num_classes, in_channels=in_channels, attention=attn)
    # The 3x3 "cifar" stem keeps small images (8x8 .. 32x32) from vanishing before layer4.
    build = getattr(models, name)
    return build(num_classes=num_classes, attention=attn, stem="cifar", in_channels=in_channels)


def make_optimizer(config, params):
    if config.optimizer == "sgd":
        return optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    cls = optim.Adam if config.optimizer == "adam" else optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config, optimizer):
    """The per-epoch schedule, with an optional linear warm-up; None for a constant lr."""
    lrs = optim.lr_scheduler
    warmup = config.warmup_epochs
    main_epochs = config.epochs - warmup
    if config.scheduler == "step":
        step = config.step_size or max(1, config.epochs // 3)
        main = lrs.StepLR(optimizer, step_size=step, gamma=config.gamma)
    elif config.scheduler == "cosine":
        main = lrs.CosineAnnealingLR(optimizer, T_max=max(1, main_epochs))
    else:
        main = None
    if not warmup:
        return main
    # Epoch 0 runs at lr / (W + 1), rising linearly to the full lr at epoch W.
    ramp = lrs.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
    if main is None:
        return ramp
    return lrs.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
