"""Median timings of conv2d forward and forward+backward on the CPU (and PyTorch's, if installed).

    python benchmarks/bench_conv.py [--n 64] [--c 64] [--hw 32] [--k 3] [--repeat 10] [--threads T]

Prints the OpenBLAS environment too: it changes float32 GEMM speed (docs/design.md, "Measured facts").
``--threads 1`` pins numba, OpenBLAS and torch to one thread: on a loaded 2-core machine
every hand-off between thread pools waits for a time slice, and single-thread figures are
the comparable ones.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "--threads" in sys.argv:  # must be set before numpy / numba load their thread pools
    _threads = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = _threads

import numpy as np

import minicbam as mc
from minicbam.ops.conv2d import conv2d


def median_time(fn, repeat):
    """(median, min) wall time in ms; the min is the figure to trust on a loaded machine."""
    fn()  # warm-up (JIT compile)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def bench_minicbam(x, w, b, pad, repeat):
    tx, tw, tb = (mc.tensor(a, requires_grad=True) for a in (x, w, b))

    def fwd():
        with mc.no_grad():
            conv2d(tx, tw, tb, padding=pad)

    def fwd_bwd():
        conv2d(tx, tw, tb, padding=pad).sum().backward()

    return median_time(fwd, repeat), median_time(fwd_bwd, repeat)


def bench_torch(x, w, b, pad, repeat):
    import torch

    if "--threads" in sys.argv:
        torch.set_num_threads(int(os.environ["NUMBA_NUM_THREADS"]))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, tb, padding=pad)

    def fwd_bwd():
        torch.nn.functional.conv2d(tx, tw, tb, padding=pad).sum().backward()

    return median_time(fwd, repeat), median_time(fwd_bwd, repeat)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--c", type=int, default=64)
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="threads for numba, BLAS, torch")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.c, args.hw, args.hw), dtype=np.float32)
    w = rng.standard_normal((args.c, args.c, args.k, args.k), dtype=np.float32) * 0.05
    b = rng.standard_normal(args.c, dtype=np.float32)
    pad = args.k // 2
    env = {
        k: os.environ.get(k)
        for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS")
    }
    print(f"x {x.shape} w {w.shape} pad {pad} float32; env {env}; load {os.getloadavg()[0]:.2f}")
    print("ms (median / min)      forward           forward+backward")
    fwd, fwd_bwd = bench_minicbam(x, w, b, pad, args.repeat)
    print(f"minicbam       {fwd[0]:8.1f} / {fwd[1]:6.1f}    {fwd_bwd[0]:8.1f} / {fwd_bwd[1]:6.1f}")
    try:
        t_fwd, t_fwd_bwd = bench_torch(x, w, b, pad, args.repeat)
    except ImportError:
        return
    print(
        f"torch          {t_fwd[0]:8.1f} / {t_fwd[1]:6.1f}    "
        f"{t_fwd_bwd[0]:8.1f} / {t_fwd_bwd[1]:6.1f}"
    )
    print(f"ratio (median) {fwd[0] / t_fwd[0]:8.2f} x          {fwd_bwd[0] / t_fwd_bwd[0]:8.2f} x")


if __name__ == "__main__":
    main()
