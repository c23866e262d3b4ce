"""A first run's kernels, compiled on two processes before training starts.

On an empty kernel cache ``minicbam train`` would compile every kernel of its model during
epoch 1, one after another on one core. ``compile_ahead(config)`` instead

1. starts a helper process (``python -m minicbam.app.first_run CLAIM_DIR CONFIG``),
2. dry-runs one training step and one evaluation step of ``config`` in both processes
   under ``minicbam.precompile.record_compiles`` (kernels skipped, nothing trained): both
   get the same list of kernels and signatures, since both build the same run,
3. compiles that list on both processes at once, each function claimed by exactly one of
   them (this process from the front, the helper from the back), into the on-disk cache,
4. waits for the helper; training then loads every kernel from the cache.

The dry run covers a training loader's first and last batch and the test loader's first
and last batch: the batch sizes choose between kernels (a serial or a parallel version,
one convolution algorithm or another), the values do not. A kernel the dry run missed
still compiles on its first call, as before; a helper that fails or is killed costs only
time. The dry run builds its own model, loaders and optimizer and touches none of the
run's: the run built afterwards trains exactly as without it (tests/app/test_first_run.py).

It runs for CPU training on a machine with two cores or more; ``MINICBAM_PARALLEL_COMPILE=0``
compiles as before (one process, during epoch 1), ``=1`` compiles ahead even on one core.
"""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from minicbam import precompile
from minicbam.app.config import TrainConfig
from minicbam.app.train import _Run, run_epoch

__all__ = ["compile_ahead", "parallel_compile_enabled"]

HELPER_TIMEOUT_S = 600  # a helper still compiling then is killed; the run compiles the rest


def parallel_compile_enabled(config):
    """Whether a first run of ``config`` compiles ahead on two processes: CPU runs only;
    ``MINICBAM_PARALLEL_COMPILE`` "0" never, "1" always, unset when this process may run
    on two cores or more."""
    told = os.environ.get("MINICBAM_PARALLEL_COMPILE", "")
    if told == "0" or config.device != "cpu":
        return False
    return told == "1" or len(os.sched_getaffinity(0)) >= 2


def compile_ahead(config):
    """Compile the kernels one epoch of ``config`` needs, on this process and a helper.
    Returns ``{"functions": n, "here": [...], "helper_returncode": int or None}``: the
    number of functions recorded, the keys of those compiled here, and the helper's exit
    status (None: killed after ``HELPER_TIMEOUT_S``)."""
    with tempfile.TemporaryDirectory(prefix="minicbam-compile-") as claim_dir:
        helper = subprocess.Popen(
            [sys.executable, "-m", "minicbam.app.first_run", claim_dir, _config_json(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            entries = dry_run(config)
            here = precompile.compile_claimed(entries, claim_dir)
            returncode = helper.wait(timeout=HELPER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
    functions = len(precompile.group_by_index(entries))
    return {"functions": functions, "here": here, "helper_returncode": returncode}


def _config_json(config):
    return json.dumps(dataclasses.asdict(config))


def dry_run(config):
    """``[(dispatcher, argtypes), ...]``: what a training and a test step of ``config``
    would compile, in call order. Trains nothing: the run built here is thrown away, its
    notes (stdout, stderr) are dropped and a failure ends the list early."""
    quiet = io.StringIO()
    with (
        precompile.record_compiles() as entries,
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        np.errstate(all="ignore"),  # garbage values: overflow warnings are noise
    ):
        try:
            _steps(config)
        except Exception:  # noqa: BLE001, S110 - whatever was recorded still helps
            pass
    return entries


def _steps(config):
    run = _Run(config)
    train = _first_and_last_batches(run.loader)
    run_epoch(run.model, train, config.device, run.optimizer, config.label_smoothing)
    run_epoch(run.model, _first_and_last_batches(run.test_loader), config.device)


def _first_and_last_batches(loader):
    """The first and the last batch of ``loader``'s epoch 0 (one when it has only one)."""
    order, size = loader.order(0), loader.batch_size
    starts = sorted({0, (len(loader) - 1) * size})
    return [
        loader.collate_fn([loader.dataset[i] for i in order[s : s + size].tolist()]) for s in starts
    ]


def _helper_main(argv):
    claim_dir, config_json = argv
    parent = os.getppid()
    config = TrainConfig(**json.loads(config_json)).validate()

    def orphaned():  # the run was killed: stop compiling for it
        return os.getppid() != parent

    precompile.compile_claimed(dry_run(config), claim_dir, reverse=True, stop=orphaned)
    return 0


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))
