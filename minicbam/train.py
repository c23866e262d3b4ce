"""Training and evaluation loops behind ``minicbam train`` and ``minicbam eval``.

    from minicbam.train import TrainConfig, fit
    result = fit(TrainConfig(model="digits-cnn", attention="cbam", epochs=15, out="runs/x"))

``fit`` trains one of the named models on one of the named datasets and writes into
``config.out``:

    metrics.csv              epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds
                             (train_loss includes label smoothing; test_loss is plain
                             cross-entropy; lr is the epoch's; accuracies in [0, 1])
    curves.png               loss and accuracy per epoch (minicbam.viz.plot_curves)
    checkpoint.safetensors   the latest epoch (rewritten atomically after every epoch)
    best.safetensors         the epoch with the best test accuracy so far

A checkpoint is one ``minicbam.serialization.save`` tree: ``model`` (state_dict),
``optimizer``, ``scheduler``, ``epoch`` (epochs completed), ``rng`` (minicbam's generator),
``config`` (a ``TrainConfig`` as a dict), ``history`` (the metrics rows) and ``best_acc``.
Everything random is a function of the seed, the epoch and that generator state (the
DataLoader shuffles with ``(seed, epoch)``), so ``fit(config, resume=checkpoint)`` continues
a run exactly as if it had never stopped.
"""

import contextlib
import csv
import dataclasses
import math
import os
import tempfile
import time

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import models, optim
from minicbam.data import CIFAR10, MNIST, DataLoader, Digits, FashionMNIST, Subset, transforms
from minicbam.serialization import load, save
from minicbam.tensor import generator

MODELS = ("digits-cnn", "resnet18", "resnet34", "resnet50")
ATTENTIONS = ("none", "se", "cam", "sam", "cbam")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine")
DEVICES = ("cpu", "cuda")
METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


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
    label_smoothing: float = 0.1  # measured: 99.2% vs 97.8% test accuracy on digits
    device: str = "cpu"
    seed: int = 0
    out: str = ""  # "" -> runs/<model>-<attention>-<dataset>
    limit_train: int = 0  # 0 -> the whole training set; else a fixed random subset
    limit_test: int = 0

    def validate(self):
        """Raise ``UserError`` naming the first bad setting."""
        _check_choice("model", self.model, MODELS)
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("device", self.device, DEVICES)
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


def _check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


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
        raise UserError(
            f"data directory {data_dir!r} does not exist; pass --data-dir DIR holding the "
            f"{dataset} files ({_expected_files(dataset)})"
        )
    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST, "cifar10": CIFAR10}[dataset]
    try:
        return cls(data_dir, train=train, transform=transform, seed=seed)
    except FileNotFoundError as e:
        raise UserError(f"{e}; pass --data-dir DIR") from None


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
    _check_choice("model", name, MODELS)
    _check_choice("attention", attention, ATTENTIONS)
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


# ------------------------------------------------------------------------------ loops


def _progress_bar(loader, desc, enabled):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


def run_epoch(
    model, loader, device="cpu", optimizer=None, label_smoothing=0.0, progress=False, desc=""
):
    """One pass over ``loader``: trains when ``optimizer`` is given, else evaluates.

    Returns ``(mean loss, accuracy, predictions)`` over the samples seen.
    """
    training = optimizer is not None
    model.train(training)
    total_loss, correct, seen, predictions = 0.0, 0, 0, []
    bar = _progress_bar(loader, desc, progress)
    with contextlib.nullcontext() if training else mc.no_grad():
        for x, y in bar:
            labels = y.numpy()
            if device != "cpu":
                x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            pred = logits.argmax(1).numpy()
            predictions.append(pred)
            total_loss += loss.item() * len(labels)
            correct += int((pred == labels).sum())
            seen += len(labels)
            if progress:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.2%}")
    return total_loss / seen, correct / seen, np.concatenate(predictions)


def evaluate(model, dataset, device="cpu", batch_size=256, num_classes=None, progress=False):
    """Loss, accuracy and confusion matrix (rows: true class) of ``model`` on ``dataset``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    loss, acc, pred = run_epoch(model, loader, device, progress=progress, desc="eval")
    labels = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    k = num_classes or int(max(labels.max(), pred.max())) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return {"loss": loss, "accuracy": acc, "confusion": confusion, "n": len(labels)}


# ------------------------------------------------------------------------ checkpoints


def _rng_state():
    # PCG64's 128-bit integers survive the JSON tree of a checkpoint as decimal strings.
    state = generator().bit_generator.state
    inner = {k: str(v) for k, v in state["state"].items()}
    return {
        "bit_generator": state["bit_generator"],
        "state": inner,
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _set_rng_state(saved):
    state = dict(saved)
    state["state"] = {k: int(v) for k, v in saved["state"].items()}
    generator().bit_generator.state = state


def read_checkpoint(path):
    """The checkpoint tree at ``path``, with its config as a ``TrainConfig``."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} not found")
    try:
        tree = load(path)
    except ValueError as e:
        raise UserError(f"cannot read checkpoint {path!r}: {e}") from None
    if not isinstance(tree, dict) or "model" not in tree or "config" not in tree:
        raise UserError(
            f"{path!r} is not a minicbam training checkpoint "
            "(it lacks 'model' and 'config'); `minicbam train` writes them"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    tree["config"] = TrainConfig(**{k: v for k, v in tree["config"].items() if k in known})
    return tree


def load_model(path, device="cpu"):
    """(model in eval mode, TrainConfig, checkpoint tree) from a training checkpoint."""
    tree = read_checkpoint(path)
    config = tree["config"]
    shapes = tree.get("data", {})
    model = make_model(
        config.model,
        config.attention,
        int(shapes.get("num_classes", 10)),
        int(shapes.get("in_channels", 1)),
    )
    try:
        model.load_state_dict(tree["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{path!r}: the weights do not fit {config.model} (attention {config.attention}): {e}"
        ) from None
    return model.to(device).eval(), config, tree


def _write_atomic(path, write):
    from minicbam.viz import public_mode

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, public_mode())  # mkstemp makes it 0600; metrics are meant to be read
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_metrics(path, history):
    def write(f):
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)

    _write_atomic(path, write)


# -------------------------------------------------------------------------------- fit


class _Run:
    """The objects of one training run, built from a config (and restored from a checkpoint)."""

    def __init__(self, config):
        self.config = config
        mc.manual_seed(config.seed)  # model initialisation draws from this generator
        self.train_set, self.test_set, self.info = make_datasets(config)
        self.model = make_model(
            config.model, config.attention, self.info.num_classes, self.info.in_channels
        ).to(config.device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.scheduler = make_scheduler(config, self.optimizer)
        self.loader = DataLoader(
            self.train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed
        )
        self.test_loader = DataLoader(self.test_set, batch_size=256, shuffle=False)
        self.epoch, self.history, self.best_acc = 0, [], -1.0

    def restore(self, tree):
        self.model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        if self.scheduler is not None and tree.get("scheduler"):
            self.scheduler.load_state_dict(tree["scheduler"])
        _set_rng_state(tree["rng"])
        self.epoch = int(tree["epoch"])
        self.history = [dict(row) for row in tree["history"]]
        self.best_acc = float(tree["best_acc"])

    def checkpoint(self):
        info = dataclasses.asdict(self.info)
        info["classes"] = list(info["classes"])
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "rng": _rng_state(),
            "config": dataclasses.asdict(self.config),
            "data": info,
            "history": self.history,
            "best_acc": self.best_acc,
        }


def check_device(device):
    if device == "cuda" and not mc.cuda_is_available():
        raise UserError("--device cuda: numba.cuda finds no usable GPU; use --device cpu")


def _epoch_line(row, epochs, best):
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2%}  test loss {row['test_loss']:.4f} "
        f"acc {row['test_acc']:.2%}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
        + ("  *best*" if best else "")
    )


def _print_now(line):
    print(line, flush=True)  # per-epoch lines must show up even when stdout is a pipe


def fit(config, resume=None, progress=False, stop_after=0, log=_print_now):
    """Train per ``config`` (resuming from the checkpoint tree ``resume`` if given).

    ``stop_after`` > 0 stops after that many epochs of this call (the schedule still spans
    ``config.epochs``), as an interrupted run would. Returns ``{"history", "best_acc",
    "out"}``.
    """
    config.validate()
    check_device(config.device)
    run = _Run(config)
    if resume is not None:
        run.restore(resume)
    out = config.out_dir()
    os.makedirs(out, exist_ok=True)
    log(
        f"training {config.model} (attention {config.attention}) on {config.dataset}: "
        f"{len(run.train_set)} train / {len(run.test_set)} test samples, "
        f"{sum(p.numel() for p in run.model.parameters()):,} parameters -> {out}"
    )
    done = 0
    while run.epoch < config.epochs and not (stop_after and done >= stop_after):
        _train_epoch(run, out, progress, log)
        done += 1
    return {"history": run.history, "best_acc": run.best_acc, "out": out}


def _train_epoch(run, out, progress, log):
    config, epoch = run.config, run.epoch
    start = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    run.loader.set_epoch(epoch)
    tag = f"epoch {epoch + 1}/{config.epochs}"
    train_loss, train_acc, _ = run_epoch(
        run.model,
        run.loader,
        config.device,
        run.optimizer,
        config.label_smoothing,
        progress,
        f"{tag} train",
    )
    if run.scheduler is not None:
        run.scheduler.step()
    test_loss, test_acc, _ = run_epoch(
        run.model, run.test_loader, config.device, progress=progress, desc=f"{tag} test"
    )
    run.epoch = epoch + 1
    row = {
        "epoch": run.epoch,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": lr,
        "seconds": time.perf_counter() - start,
    }
    run.history.append(row)
    best = test_acc > run.best_acc
    run.best_acc = max(run.best_acc, test_acc)
    _save_outputs(run, out, best)
    log(_epoch_line(row, config.epochs, best))


def _save_outputs(run, out, best):
    from minicbam.viz import plot_curves

    tree = run.checkpoint()
    save(tree, os.path.join(out, "checkpoint.safetensors"))
    if best:
        save(tree, os.path.join(out, "best.safetensors"))
    write_metrics(os.path.join(out, "metrics.csv"), run.history)
    smoothing = run.config.label_smoothing
    note = f"with label smoothing {smoothing}" if smoothing else ""
    plot_curves(run.history, os.path.join(out, "curves.png"), train_note=note)
