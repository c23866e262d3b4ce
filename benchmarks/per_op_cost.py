"""Where a small op's time goes: the layers of one ``a * b`` on (4, 4) float32 tensors, from
the bare numba kernel call up to the chain of 100 ops that ``run.py``'s ``small_chain100``
times, and PyTorch's chain in the same process for scale (its own defaults; one process is
enough here: these rows run on one thread and never overlap).

    PYTHONPATH=$PWD python benchmarks/per_op_cost.py [--repeat 7]

Each row is the minimum over --repeat rounds of the mean of a batch of calls, in us: the
noise on a shared machine only ever adds time. docs/performance.md ("Small ops") gives the
figures and what each layer does.
"""

import argparse
import timeit

import numpy as np

import minicbam as mc
from minicbam.kernels.elementwise import apply_binary, apply_binary_grads, zero_one
from minicbam.ops.binary import Mul, mul_grads_kernel, mul_kernel

SHAPE = (4, 4)
PAIRS = 50  # the chain: 50 x (mul, add), as benchmarks/workloads.py's small_chain100


def best_us(fn, calls, repeat):
    fn()  # compiles on an empty cache
    return min(timeit.repeat(fn, number=calls, repeat=repeat)) / calls * 1e6


def minicbam_rows():
    x = np.ones(SHAPE, np.float32)
    a, b = (mc.tensor(x.copy(), requires_grad=True) for _ in range(2))
    zero = zero_one(x.dtype)[0]
    apply_binary(mul_kernel, x, x)  # builds the serial twin
    flat = x.ravel()
    out = np.empty_like(flat)
    serial = mul_kernel.serial_cpu

    def chain():
        y = a
        for _ in range(PAIRS):
            y = y * b + a
        return y.sum()

    def chain_step():
        a.grad = b.grad = None
        chain().backward()

    return [
        ("numba serial kernel call, 1-D views ready", lambda: serial(out, flat, flat, zero, zero)),
        ("np.empty of the output", lambda: np.empty(SHAPE, np.float32)),
        ("apply_binary (output, views, kernel)", lambda: apply_binary(mul_kernel, x, x)),
        (
            "Mul's backward kernel (both gradients)",
            lambda: apply_binary_grads(mul_grads_kernel, x, x, x),
        ),
        ("Mul()(a, b): the graph node and its tensor", lambda: Mul()(a, b)),
        ("a * b (operator, dtype/shape checks)", lambda: a * b),
        (f"chain of {2 * PAIRS} ops, forward", chain),
        (f"chain of {2 * PAIRS} ops, forward + backward", chain_step),
    ]


def torch_rows():
    try:
        import torch
    except ImportError:
        return []
    a, b = (torch.ones(*SHAPE, requires_grad=True) for _ in range(2))

    def chain():
        y = a
        for _ in range(PAIRS):
            y = y * b + a
        return y.sum()

    def chain_step():
        a.grad = b.grad = None
        chain().backward()

    return [
        ("torch: a * b", lambda: a * b),
        (f"torch: chain of {2 * PAIRS} ops, forward", chain),
        (f"torch: chain of {2 * PAIRS} ops, forward + backward", chain_step),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for what, fn in minicbam_rows() + torch_rows():
        calls = 200 if "chain" in what else 20000
        print(f"{what:52s} {best_us(fn, calls, args.repeat):9.2f} us")


if __name__ == "__main__":
    main()
