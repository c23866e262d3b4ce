"""Checks under ``mpiexec -n 2``, started by these tests (mpi_checks.py holds them): DDP +
SyncBatchNorm == one process on the whole batch (float64, 1e-12), gradients == the mean of
the ranks' gradients without SyncBatchNorm, bucketing and overlap bit-identical to a plain
allreduce, unused parameters, no_sync, SyncBatchNorm on uneven shards, the collectives; a
killed rank and a rank that raises end the job with an error in bounded time.

Skipped (with the reason) only where mpi4py or mpiexec is missing: ``pip install '.[mpi]'``.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# Seconds. A hang would otherwise block CI; generous because a cold numba cache makes both
# ranks compile the kernels at once (minutes on a loaded 2-core machine).
TIMEOUT = 600


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def _skip_reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec found (pip install '.[mpi]' brings MPICH's)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def mpirun(args, n=2, timeout=TIMEOUT, cudasim=False):
    """Run ``python args`` on n ranks; the environment makes each rank single-threaded
    (n ranks share this machine's cores) and imports this checkout's minicbam."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if cudasim:
        env["NUMBA_ENABLE_CUDASIM"] = os.environ.get("NUMBA_ENABLE_CUDASIM", "1")
    cmd = [_mpiexec(), "-n", str(n), sys.executable] + list(args)
    return subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "results.json"
    proc = mpirun([os.path.join(HERE, "mpi_checks.py"), "cpu", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        return json.load(f)


CHECKS = [
    "check_collectives",
    "check_construction_broadcasts_rank0",
    "check_grads_are_rank_mean",
    "check_buckets_bit_identical_to_plain_allreduce",
    "check_unused_parameters",
    "check_no_sync_accumulates",
    "check_sync_batch_norm_uneven_shards",
    "check_ddp_syncbn_equals_one_process",
]


@pytest.mark.parametrize("name", CHECKS)
def test_on_two_ranks(results, name):
    assert name in results, sorted(results)
    assert results[name] == "ok", results[name]


def test_cuda_tensors_on_two_ranks(tmp_path):
    """CUDA tensors (a GPU, or numba's simulator as in the rest of the suite)."""
    out = tmp_path / "cuda.json"
    proc = mpirun([os.path.join(HERE, "mpi_checks.py"), "cuda", str(out)], cudasim=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        result = json.load(f)
    assert result["check_cuda_tensors"] == "ok", result["check_cuda_tensors"]


def test_a_killed_rank_ends_the_job():
    # timeout: subprocess.run raises TimeoutExpired (a failure) if the job hangs
    proc = mpirun([os.path.join(HERE, "mpi_checks.py"), "kill"], timeout=120)
    assert proc.returncode != 0
    assert "passed the allreduce" not in proc.stdout


def test_a_failing_rank_aborts_the_others_with_a_message():
    proc = mpirun([os.path.join(HERE, "mpi_checks.py"), "raise"], timeout=120)
    assert proc.returncode != 0
    assert "rank 1 failed (ValueError: a deliberate failure)" in proc.stderr
    assert "stopping every rank of the job" in proc.stderr
