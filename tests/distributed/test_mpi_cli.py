"""``mpiexec -n 2 minicbam train``: data-parallel with no extra flag, only rank 0 prints and
writes, the same numbers as one process (same global batches; float32 rounding apart),
``--resume`` across different numbers of processes, and errors that end the job."""

import csv
import os
import subprocess
import sys

import pytest
from test_mpi import TIMEOUT, mpirun, pytestmark  # noqa: F401  (the skip when MPI is missing)

# 33 test samples: uneven shards (17 and 16), so the ranks' means must be weighted by their sizes
ARGS = ["--limit-train", "64", "--limit-test", "33", "--batch-size", "32", "--no-progress"]


def _train(out, n, *extra):
    args = ["-m", "minicbam", "train", "--epochs", "2", "--out", str(out)] + ARGS + list(extra)
    if n > 1:
        return mpirun(args, n=n)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run(
        [sys.executable] + args,
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


def _rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _close(a, b):
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_two_processes_train_like_one_and_resume_across_counts(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _train(two, 2, "--stop-after", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("epoch   1/2") == 1  # rank 0 only
    assert "2 processes x 16 samples per batch" in proc.stdout
    assert sorted(os.listdir(two)) == [
        "best.safetensors",
        "checkpoint.safetensors",
        "curves.png",
        "metrics.csv",
    ]
    proc = _train(one, 1, "--stop-after", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _close(_rows(two)[0], _rows(one)[0])
    # continue the 2-process run in 1 process and the 1-process run in 2 processes
    for out, n in ((two, 1), (one, 2)):
        proc = _train(out, n, "--resume", str(out / "checkpoint.safetensors"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("epoch   2/2") == 1
    rows_two, rows_one = _rows(two), _rows(one)
    assert [r["epoch"] for r in rows_two] == [1, 2] == [r["epoch"] for r in rows_one]
    _close(rows_two[1], rows_one[1])


def test_errors_stop_every_rank(tmp_path):
    proc = _train(tmp_path / "x", 2, "--batch-size", "31")
    assert proc.returncode != 0
    assert "must be a multiple of the number of processes (2)" in proc.stderr
    assert "stopping every rank" in proc.stderr
    proc = _train(tmp_path / "y", 2, "--resume", str(tmp_path / "missing.safetensors"))
    assert proc.returncode != 0
    assert "stopping every rank" in proc.stderr and "missing.safetensors" in proc.stderr
