"""The CPU sum kernels alone: a total of a (64, 64, 32, 32) float32 activation (few long rows,
summed by segments) and sums over leading dims (column sums: bias and broadcast gradients).

    PYTHONPATH=$PWD python benchmarks/reductions.py [--calls 30]

Prints the minimum and the median of ``--calls`` calls of each kernel, in ms (after one
untimed call, which compiles it on an empty cache). docs/performance.md ("Sums") gives the
figures before and after the kernels' loops moved to 1-D views.
"""

import argparse
import time

import numpy as np

from minicbam.ops.reduce import _sum_columns_cpu, _sum_rows_cpu

# (what, kernel, out size, x size, the kernel's third argument: K for rows, R for columns)
CASES = [
    ("total of 64*64*32*32 (rows: 1 x 4M)", _sum_rows_cpu, 1, 1 << 22, 1 << 22),
    ("rows 4096 x 1024", _sum_rows_cpu, 4096, 1 << 22, 1024),
    ("columns: 64 x 65536", _sum_columns_cpu, 65536, 1 << 22, 64),
    ("columns: 4096 x 1024", _sum_columns_cpu, 1024, 1 << 22, 4096),
    ("columns: 8192 x 64", _sum_columns_cpu, 64, 1 << 19, 8192),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for what, kernel, out_size, size, third in CASES:
        x = rng.standard_normal(size).astype(np.float32)
        out, zero = np.empty(out_size), np.float64(0)
        kernel(out, x, third, zero)
        times = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            kernel(out, x, third, zero)
            times.append(time.perf_counter() - t0)
        print(f"{what:<40} min {1e3 * min(times):7.3f} ms  median {1e3 * np.median(times):7.3f} ms")


if __name__ == "__main__":
    main()
