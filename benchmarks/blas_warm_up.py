"""NumPy's OpenBLAS before and after minicbam's one warm-up product
(minicbam/kernels/task_pool.py, ``WARM_UP_PRODUCT``; docs/performance.md, "OpenBLAS's cold
buffer").

    PYTHONPATH=$PWD python benchmarks/blas_warm_up.py [--rounds 3] [--steps 5]

Part 1, in fresh processes without minicbam: single-threaded float32 products of a few
shapes, GFLOP/s (best of 3 calls) before and after one product of the warm-up's shapes.
Part 2: workloads of benchmarks/workloads.py timed in fresh processes, alternating between
minicbam as it is and minicbam with the warm-up switched off (``WARM_UP_PRODUCT = None``),
the median of ``--steps`` steps after one untimed step per process, medians over
``--rounds`` processes, ms.
"""

import argparse
import os
import statistics
import subprocess
import sys

PRODUCTS = [(256, 256, 256), (288, 288, 288), (1024, 128, 128), (64, 512, 512)]
WORKLOADS = ["conv3x3_fwd", "conv3x3_fwd_bwd", "conv3x3_c128_fwd_bwd", "conv3x3_c256_fwd_bwd"]

BLAS = """
import time, numpy as np
from threadpoolctl import threadpool_limits
rng = np.random.default_rng(0)
def gflops(m, k, n):
    a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    o = np.empty((m, n), np.float32)
    np.matmul(a, b, out=o)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter(); np.matmul(a, b, out=o); best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9
with threadpool_limits(1, user_api="blas"):
    m, k, n = {shape}
    before = gflops(m, k, n)
    np.matmul(np.ones({warm_a}, np.float32), np.ones({warm_b}, np.float32))
    print(before, gflops(m, k, n))
"""

WORKLOAD = """
import statistics, sys, time
sys.path.insert(0, {benchmarks!r})
import workloads
from minicbam.kernels import task_pool
if {off}:
    task_pool.WARM_UP_PRODUCT = None
step = workloads.WORKLOADS[{name!r}].minicbam(False)
step()
times = []
for _ in range({steps}):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e3)
"""


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.split()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    from minicbam.kernels.task_pool import WARM_UP_PRODUCT

    warm_a, warm_b = WARM_UP_PRODUCT
    print(f"one thread, GFLOP/s before -> after one {warm_a} @ {warm_b} product:")
    for shape in PRODUCTS:
        before, after = _run(BLAS.format(shape=shape, warm_a=warm_a, warm_b=warm_b))
        print(f"  {'x'.join(map(str, shape)):>14s}  {before:6.1f} -> {after:6.1f}")
    benchmarks = os.path.dirname(os.path.abspath(__file__))
    print(f"workload step, ms (median of {args.steps} steps, median over {args.rounds} processes):")
    for name in WORKLOADS:
        runs = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                code = WORKLOAD.format(
                    benchmarks=benchmarks, off=mode == "off", name=name, steps=args.steps
                )
                runs[mode].append(_run(code)[0])
        off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
        print(f"  {name:22s} warm-up off {off:7.1f}   on {on:7.1f}   ({off / on:.2f}x)")


if __name__ == "__main__":
    main()
