"""``mpiexec -n N minicbam train ...``: the same training run, data-parallel over N processes.

Nothing to switch on: a launch by an MPI launcher with more than one process (its
environment says so, see ``minicbam.distributed.launched_world_size``) makes ``minicbam
train`` (and ``minicbam.app.train.fit``) run here instead:

- every BatchNorm becomes a ``SyncBatchNorm`` (CBAM's spatial-attention BN included), so
  the statistics are those of the global batch, and the model is wrapped in
  ``DistributedDataParallel`` (rank 0's initial weights everywhere, averaged gradients);
- ``--batch-size`` is the global batch: each rank takes ``batch_size / N`` samples of it
  from a ``DistributedSampler`` whose global order is the single-process shuffle, so the
  global batches -- and so the run -- do not depend on N (up to rounding, and the few samples
  the sampler repeats to give every rank as many as the others);
- every rank evaluates its share of the test set; the sums are reduced;
- only rank 0 prints, writes metrics, curves and checkpoints. A checkpoint holds the plain
  model (no ``module.`` prefix), so ``--resume`` works with any number of processes,
  including one;
- any failure on any rank (a bad setting, a missing file, an exception) prints its message
  and ends the whole job with ``MPI_Abort``; a rank that dies outright is cleaned up by the
  launcher. No rank is left waiting in a collective.
"""

import os
import sys
import time

import numpy as np

from minicbam import distributed as dist

__all__ = ["fit", "launched", "wrap_command"]


def launched():
    """True when started by an MPI launcher with more than one process."""
    return dist.launched_world_size() > 1


# ----------------------------------------------------------------------------- the command
def wrap_command(handler):
    """``handler`` itself for a plain run; under ``mpiexec -n N`` (N > 1), a handler that
    joins the MPI job, silences ranks other than 0 and turns any failure into an abort."""
    if not launched():
        return handler

    def run(args):
        if not dist.is_initialized():
            dist.init_process_group(backend="mpi")
        if dist.get_rank() != 0:  # only rank 0 talks; a failure still reaches the real stderr
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the whole run)
        with dist.abort_on_error(f"minicbam {args.command}", plain=_user_errors()):
            status = handler(args)
            if status:
                raise RuntimeError(f"the command ended with status {status}")
            dist.barrier()  # rank 0 has written its files when the job ends
            dist.destroy_process_group()
        return status

    return run


def _user_errors():
    from minicbam.app.config import UserError
    from minicbam.io.serialization import CorruptFileError, UnsafeFileError

    return (UserError, CorruptFileError, UnsafeFileError, FileNotFoundError)


# ----------------------------------------------------------------------------- training
def fit(config, resume=None, progress=False, stop_after=0, log=print):
    """``minicbam.app.train.fit`` over the ranks of the MPI job (initialised here if the
    caller has not); returns the result on rank 0 and an empty history elsewhere."""
    if not dist.is_initialized():
        dist.init_process_group(backend="mpi")
    with dist.abort_on_error("minicbam train", plain=_user_errors()):
        return _fit(config, resume, progress, stop_after, log)


def _fit(config, resume, progress, stop_after, log):
    from minicbam.app.config import UserError, check_device
    from minicbam.app.train import draw_curves

    config.validate()
    check_device(config.device)
    world = dist.get_world_size()
    if config.batch_size % world:
        raise UserError(
            f"--batch-size {config.batch_size} is the global batch; it must be a multiple of "
            f"the number of processes ({world})"
        )
    run = _DistributedRun(config, resume)
    root = dist.get_rank() == 0
    out = config.out_dir()
    if root:
        os.makedirs(out, exist_ok=True)
        log(
            f"training {config.model} (attention {config.attention}) on {config.dataset}: "
            f"{len(run.run.train_set)} train / {len(run.run.test_set)} test samples, "
            f"{sum(p.numel() for p in run.run.model.parameters()):,} parameters, "
            f"{world} processes x {config.batch_size // world} samples per batch -> {out}"
        )
    done = 0
    try:
        while run.run.epoch < config.epochs and not (stop_after and done >= stop_after):
            run.epoch(out, progress and root, log if root else None)
            done += 1
    finally:
        if root:
            draw_curves(run.run, out)
    history = run.run.history if root else []
    return {"history": history, "best_acc": run.run.best_acc, "out": out}


class _DistributedRun:
    """train._Run's objects, converted to SyncBatchNorm, wrapped in DDP, with sharded data."""

    def __init__(self, config, resume):
        from minicbam.app.train import _Run
        from minicbam.data import DataLoader, DistributedSampler, Subset
        from minicbam.nn import SyncBatchNorm
        from minicbam.nn.parallel import DistributedDataParallel

        rank, world = dist.get_rank(), dist.get_world_size()
        self.run = run = _Run(config)
        SyncBatchNorm.convert_sync_batchnorm(run.model)  # same parameters: the optimiser keeps them
        if resume is not None:
            run.restore(resume)
        self.ddp = DistributedDataParallel(run.model)
        sampler = DistributedSampler(run.train_set, world, rank, shuffle=True, seed=config.seed)
        self.loader = DataLoader(
            run.train_set, batch_size=config.batch_size // world, sampler=sampler
        )
        shard = Subset(run.test_set, list(range(rank, len(run.test_set), world)))
        self.test_loader = DataLoader(shard, batch_size=256) if len(shard) else None

    def epoch(self, out, progress, log):
        from minicbam.app.train import _epoch_line, _save_outputs, record_epoch, run_epoch

        run, config = self.run, self.run.config
        start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        self.loader.set_epoch(run.epoch)
        tag = f"epoch {run.epoch + 1}/{config.epochs}"
        train = run_epoch(
            self.ddp,
            self.loader,
            config.device,
            run.optimizer,
            config.label_smoothing,
            progress,
            f"{tag} train",
        )
        if run.scheduler is not None:
            run.scheduler.step()
        test = None
        if self.test_loader is not None:
            test = run_epoch(
                run.model, self.test_loader, config.device, progress=progress, desc=f"{tag} test"
            )
        row, best = record_epoch(run, _global_means(train), _global_means(test), lr, start)
        if log is not None:  # rank 0
            _save_outputs(run, out, best)
            log(_epoch_line(row, config.epochs, best))


def _global_means(result):
    """(loss, accuracy) over every rank's samples from each rank's run_epoch result."""
    import minicbam as mc

    if result is None:
        sums = np.zeros(3)
    else:
        loss, acc, pred = result
        sums = np.array([loss * len(pred), round(acc * len(pred)), len(pred)], np.float64)
    total = mc.tensor(sums, dtype=mc.float64)
    dist.all_reduce(total)
    loss_sum, correct, seen = total.numpy()
    return float(loss_sum / seen), float(correct / seen)  # plain floats, as run_epoch gives
