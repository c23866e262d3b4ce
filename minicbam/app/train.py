"""Training and evaluation loops behind ``minicbam train`` and ``minicbam eval``.

    from minicbam.app.config import TrainConfig
    from minicbam.app.train import fit
    result = fit(TrainConfig(model="digits-cnn", attention="cbam", epochs=15, out="runs/x"))

``fit`` trains one of the named models on one of the named datasets and writes into
``config.out``:

    metrics.csv              epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds
                             (train_loss includes label smoothing; test_loss is plain
                             cross-entropy; lr is the epoch's; accuracies in [0, 1])
    curves.png               loss and accuracy per epoch (minicbam.app.plots.plot_curves),
                             drawn once when the run ends, also on Ctrl-C or an error
                             (drawing it took ~0.4 s, as long as a digits epoch)
    checkpoint.safetensors   the latest epoch (rewritten atomically after every epoch)
    best.safetensors         the epoch with the best test accuracy so far

A checkpoint is one ``minicbam.io.serialization.save`` tree: ``model`` (state_dict),
``optimizer``, ``scheduler``, ``epoch`` (epochs completed), ``rng`` (minicbam's generator),
``config`` (a ``TrainConfig`` as a dict), ``history`` (the metrics rows) and ``best_acc``.
Everything random is a function of the seed, the epoch and that generator state (the
DataLoader shuffles with ``(seed, epoch)``), so ``fit(config, resume=checkpoint)`` continues
a run exactly as if it had never stopped. Resuming with a different ``epochs`` (a new
horizon) rebuilds the learning-rate schedule for it: the epochs already trained keep the lrs
they had, and epoch ``k`` onwards gets the lr the new schedule gives epoch ``k``, exactly as a
run started with the new ``epochs`` would (for cosine, a longer horizon makes the lr jump up
at the resume point; the restored optimizer state is kept as it is).

A model with BatchNorm cannot train on a batch of one sample: when the training set would
end with one, the loader drops that last batch (a note says so on stderr).
"""

import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn
from minicbam.app import distributed_run
from minicbam.app.checkpoint import rng_state, set_rng_state, write_metrics
from minicbam.app.config import UserError, check_device
from minicbam.app.factories import make_datasets, make_model, make_optimizer, make_scheduler
from minicbam.data import DataLoader
from minicbam.io.serialization import save

__all__ = ["evaluate", "fit", "run_epoch"]


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

    Returns ``(mean loss, accuracy, predictions)`` over the samples seen. The loss sum, the
    count of correct predictions and the predictions stay on ``device`` until the epoch
    ends and are read once then (with ``progress``, also every ``PROGRESS_EVERY`` steps):
    a read waits for the device, so reading every step would stall a GPU at every step.
    """
    training = optimizer is not None
    model.train(training)
    totals, seen, predictions = None, 0, []
    bar = _progress_bar(loader, desc, progress)
    with contextlib.nullcontext() if training else mc.no_grad():
        for step, (x, y) in enumerate(bar):
            if device != "cpu":
                x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            pred = logits.argmax(1)
            if device == "cpu":  # host values: no metric kernels to compile or launch
                pred = pred.data
            predictions.append(pred)
            totals = _accumulate(totals, loss, pred, y)
            seen += len(y)
            if progress and (step + 1) % PROGRESS_EVERY == 0:
                total_loss, correct = _read(totals)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.2%}")
    total_loss, correct = _read(totals)
    return total_loss / seen, correct / seen, _concatenate(predictions)


PROGRESS_EVERY = 20  # steps between progress-bar updates (each is a device read)


def _accumulate(totals, loss, pred, y):
    """(sum of loss * batch size in float64, number correct) on the step's device.

    On the CPU (``pred`` a NumPy array) the sums are NumPy scalars: the same float64
    products and sums, without compiling a cast, a comparison and four arithmetic kernels
    (int64, bool and float64 variants) that nothing else in a float32 run uses."""
    if isinstance(pred, np.ndarray):
        loss_sum = np.float64(loss.item()) * len(y)
        correct = np.int64(np.count_nonzero(pred == y.data))
        if totals is None:
            return loss_sum, correct
        return totals[0] + loss_sum, totals[1] + correct
    with mc.no_grad():
        loss_sum = loss.detach().to(mc.float64) * len(y)
        correct = (pred == y).sum()
        if totals is None:
            return loss_sum, correct
        return totals[0] + loss_sum, totals[1] + correct


def _concatenate(predictions):
    """The epoch's predictions as one NumPy array (host arrays or tensors)."""
    if predictions and isinstance(predictions[0], np.ndarray):
        return np.concatenate(predictions)
    return mc.cat(predictions).numpy()


def _read(totals):
    if totals is None:  # no batch: the caller's mean divides by zero, as before
        return 0.0, 0
    return float(totals[0].item()), int(totals[1].item())


def evaluate(model, dataset, device="cpu", batch_size=256, num_classes=None, progress=False):
    """Loss, accuracy and confusion matrix (rows: true class) of ``model`` on ``dataset``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    loss, acc, pred = run_epoch(model, loader, device, progress=progress, desc="eval")
    labels = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    k = num_classes or int(max(labels.max(), pred.max())) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return {"loss": loss, "accuracy": acc, "confusion": confusion, "n": len(labels)}


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
            self.train_set,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            drop_last=_drop_last(self.model, len(self.train_set), config.batch_size),
        )
        self.test_loader = DataLoader(self.test_set, batch_size=256, shuffle=False)
        self.epoch, self.history, self.best_acc = 0, [], -1.0

    def restore(self, tree):
        """Continue the run saved in ``tree``; a checkpoint that does not fit is a
        ``UserError`` naming what failed (nothing is half-restored that would be used)."""
        try:
            self.model.load_state_dict(tree["model"])
            self.optimizer.load_state_dict(tree["optimizer"])
            self.epoch = int(tree["epoch"])
            self._restore_schedule(tree)
            set_rng_state(tree["rng"])
            self.history = [dict(row) for row in tree["history"]]
            self.best_acc = float(tree["best_acc"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(
                f"cannot resume from this checkpoint: {type(e).__name__}: {e}"
            ) from None

    def _restore_schedule(self, tree):
        """Same horizon: the saved schedule. A new ``--epochs``: the schedule this config
        builds (cosine over the new horizon, StepLR's default step a third of it), advanced
        to the saved epoch, so epoch ``k`` gets the lr the new schedule gives epoch ``k``."""
        if self.scheduler is None:
            return
        saved = tree.get("config", {})
        saved_epochs = saved.get("epochs") if isinstance(saved, dict) else saved.epochs
        if saved_epochs == self.config.epochs and tree.get("scheduler"):
            self.scheduler.load_state_dict(tree["scheduler"])
            return
        for _ in range(self.epoch):  # each schedule is a closed form of its epoch counter
            self.scheduler.step()

    def checkpoint(self):
        info = dataclasses.asdict(self.info)
        info["classes"] = list(info["classes"])
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "rng": rng_state(),
            "config": dataclasses.asdict(self.config),
            "data": info,
            "history": self.history,
            "best_acc": self.best_acc,
        }


def _drop_last(model, n, batch_size):
    """Whether the training loader drops its last batch: only when that batch would hold a
    single sample and the model has BatchNorm, which cannot train on one (PyTorch raises
    too; its users pass ``drop_last=True``). A run where every batch is one sample is a
    ``UserError``."""
    if not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        return False
    if n == 1 or batch_size == 1:
        raise UserError(
            f"this model has BatchNorm, which needs at least 2 samples per training batch; "
            f"got {'1 training sample' if n == 1 else '--batch-size 1'}"
        )
    if n % batch_size != 1:
        return False
    print(
        f"note: the last training batch would hold 1 sample ({n} = {n // batch_size} x "
        f"{batch_size} + 1), which BatchNorm cannot train on; it is left out of every epoch",
        file=sys.stderr,
    )
    return True


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
    if distributed_run.launched():  # mpiexec -n N (N > 1): data-parallel, same outputs
        return distributed_run.fit(config, resume, progress, stop_after, log)
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
    try:
        while run.epoch < config.epochs and not (stop_after and done >= stop_after):
            _train_epoch(run, out, progress, log)
            done += 1
    finally:
        draw_curves(run, out)
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
    row, best = record_epoch(run, (train_loss, train_acc), (test_loss, test_acc), lr, start)
    _save_outputs(run, out, best)
    log(_epoch_line(row, config.epochs, best))


def record_epoch(run, train, test, lr, start):
    """Count the epoch, append its metrics row to ``run.history`` and track the best test
    accuracy. ``train``/``test`` are (loss, accuracy); returns (row, best so far?)."""
    run.epoch += 1
    row = {
        "epoch": run.epoch,
        "train_loss": train[0],
        "train_acc": train[1],
        "test_loss": test[0],
        "test_acc": test[1],
        "lr": lr,
        "seconds": time.perf_counter() - start,
    }
    run.history.append(row)
    best = test[1] > run.best_acc
    run.best_acc = max(run.best_acc, test[1])
    return row, best


def _save_outputs(run, out, best):
    """The per-epoch outputs: checkpoints and metrics.csv (curves: ``draw_curves``)."""
    tree = run.checkpoint()
    save(tree, os.path.join(out, "checkpoint.safetensors"))
    if best:
        save(tree, os.path.join(out, "best.safetensors"))
    write_metrics(os.path.join(out, "metrics.csv"), run.history)


def draw_curves(run, out):
    """curves.png of every epoch in ``run.history`` (none yet: nothing to draw)."""
    if not run.history:
        return
    from minicbam.app.plots import plot_curves  # matplotlib: imported only here

    smoothing = run.config.label_smoothing
    note = f"with label smoothing {smoothing}" if smoothing else ""
    plot_curves(run.history, os.path.join(out, "curves.png"), train_note=note)
