"""Where a small op's time goes: the layers of one ``a * b`` on (4, 4) float32 tensors, from
the bare numba kernel call up to the chain of 100 ops that ``run.py``'s ``small_chain100``
times; the backward sweep of that chain alone; the CBAM MLP's and the digits head's Linear
layers; NumPy's alternatives to a small kernel; the cores OpenBLAS uses for a small and a
larger sgemm; and PyTorch's chain and Linear in the same process for scale (its own defaults; one
process is enough here: these rows run on one thread and never overlap).

    PYTHONPATH=$PWD python benchmarks/per_op_cost.py [--repeat 7]

Each row is the minimum over --repeat rounds of the mean of a batch of calls, in us: the
noise on a shared machine only ever adds time. docs/performance.md ("Small ops") gives the
figures and what each layer does.
"""

import argparse
import time
import timeit

import numba
import numpy as np

import minicbam as mc
from minicbam.kernels.elementwise import apply_binary, apply_binary_grads, zero_one
from minicbam.ops.binary import Mul, mul_grads_kernel, mul_kernel

SHAPE = (4, 4)
PAIRS = 50  # the chain: 50 x (mul, add), as benchmarks/workloads.py's small_chain100


def best_us(fn, calls, repeat):
    fn()  # compiles on an empty cache
    return min(timeit.repeat(fn, number=calls, repeat=repeat)) / calls * 1e6


def chain_functions(a, b):
    """(forward, forward + backward) of the chain on two leaves, in either framework."""

    def chain():
        y = a
        for _ in range(PAIRS):
            y = y * b + a
        return y.sum()

    def chain_step():
        a.grad = b.grad = None
        chain().backward()

    return chain, chain_step


def minicbam_rows():
    x = np.ones(SHAPE, np.float32)
    a, b = (mc.tensor(x.copy(), requires_grad=True) for _ in range(2))
    zero = zero_one(x.dtype)[0]
    apply_binary(mul_kernel, x, x)  # builds the serial twin
    flat = x.ravel()
    out = np.empty_like(flat)
    serial = mul_kernel.serial_cpu

    chain, chain_step = chain_functions(a, b)

    graph = chain()

    def sweep():
        a.grad = b.grad = None
        graph.backward(retain_graph=True)

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
        (f"chain of {2 * PAIRS} ops, backward sweep alone", sweep),
    ] + linear_rows("", mc.nn.Linear, lambda v: mc.tensor(v, requires_grad=True))


# (rows, in, out): the digits CNN's CBAM MLP (both descriptors as one batch) and its head
LINEARS = [(256, 32, 4), (256, 4, 32), (128, 256, 10)]


def linear_rows(name, linear, leaf):
    rows = []
    for R, IN, OUT in LINEARS:
        layer = linear(IN, OUT)
        x = leaf(np.random.default_rng(0).random((R, IN), np.float32))

        def step(layer=layer, x=x):
            layer(x).sum().backward()

        rows.append((f"{name}Linear ({R}, {IN}) -> {OUT} forward", lambda f=layer, x=x: f(x)))
        rows.append((f"{name}Linear ({R}, {IN}) -> {OUT} forward + backward", step))
    return rows


def numpy_rows():
    """The alternatives to a numba kernel for a small elementwise op, with the kernels'
    floating-point behaviour (no warnings on overflow or division by zero)."""
    x = np.ones(SHAPE, np.float32)

    @numba.vectorize(["float32(float32, float32)"])
    def multiply(u, v):
        return u * v

    def silenced():
        with np.errstate(all="ignore"):
            return np.multiply(x, x)

    return [
        ("np.multiply, warnings left on", lambda: np.multiply(x, x)),
        ("np.multiply under np.errstate(all='ignore')", silenced),
        ("numba @vectorize multiply (a ufunc; warns too)", lambda: multiply(x, x)),
    ]


def blas_cores(n, calls=2000):
    """CPU seconds per wall second of n x n x n sgemms: whether OpenBLAS ran them on one
    thread by itself (threaded_matmul's BLAS_SERIAL_FLOPS)."""
    a = np.ones((n, n), np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        np.matmul(a, a, out=out)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def torch_rows():
    try:
        import torch
    except ImportError:
        return []
    a, b = (torch.ones(*SHAPE, requires_grad=True) for _ in range(2))

    chain, chain_step = chain_functions(a, b)
    return [
        ("torch: a * b", lambda: a * b),
        (f"torch: chain of {2 * PAIRS} ops, forward", chain),
        (f"torch: chain of {2 * PAIRS} ops, forward + backward", chain_step),
    ] + linear_rows("torch: ", torch.nn.Linear, lambda v: torch.tensor(v, requires_grad=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for what, fn in minicbam_rows() + numpy_rows() + torch_rows():
        calls = 200 if "chain" in what else 2000 if "Linear" in what else 20000
        print(f"{what:52s} {best_us(fn, calls, args.repeat):9.2f} us")
    for n in (64, 128):
        print(f"{f'cores used by a {n}^3 sgemm (NumPy BLAS defaults)':52s} {blas_cores(n):9.2f}")


if __name__ == "__main__":
    main()
