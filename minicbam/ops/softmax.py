"""Softmax and log-softmax over one dimension, as row kernels over that dimension moved last.

For a row x of length K (the chosen dim), with m = max_k x_k for numerical stability:

    softmax:      y_k = exp(x_k - m) / sum_j exp(x_j - m)
    log_softmax:  y_k = x_k - m - log sum_j exp(x_j - m)

Gradients, with gy the incoming gradient of the row:

    softmax:      gx_k = y_k * (gy_k - sum_j gy_j * y_j)
    log_softmax:  gx_k = gy_k - exp(y_k) * sum_j gy_j          (exp(y) is the softmax)

The dim is moved last with reduce.rows_layout (a gather, skipped when it already is last),
so both devices see an (R, K) matrix and handle one row per CPU iteration / CUDA thread.
The row sums accumulate in float64 for float32 inputs too, as reduce.py's do.
"""

import math

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.ops.cast import cast
from minicbam.ops.reduce import from_rows, normalize_dims, rows_layout
from minicbam.ops.reshape import reshape

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def softmax_row(out, x, r, K, log):
    base = r * K
    m = x[base]
    for k in range(1, K):
        m = max(m, x[base + k])
    total = 0.0
    for k in range(K):
        total += math.exp(x[base + k] - m)
    if log:
        lse = math.log(total)
        for k in range(K):
            out[base + k] = x[base + k] - m - lse
    else:
        for k in range(K):
            out[base + k] = math.exp(x[base + k] - m) / total


@register_jitable
def softmax_grad_row(gx, y, gy, r, K, log):
    base = r * K
    dot = 0.0
    if log:
        for k in range(K):
            dot += gy[base + k]
        for k in range(K):
            gx[base + k] = gy[base + k] - math.exp(y[base + k]) * dot
    else:
        for k in range(K):
            dot += gy[base + k] * y[base + k]
        for k in range(K):
            gx[base + k] = y[base + k] * (gy[base + k] - dot)


@njit(parallel=True, cache=True)
def _softmax_cpu(out, x, K, log):
    for r in prange(out.size // K):
        softmax_row(out, x, r, K, log)


@njit(parallel=True, cache=True)
def _softmax_grad_cpu(gx, y, gy, K, log):
    for r in prange(gx.size // K):
        softmax_grad_row(gx, y, gy, r, K, log)


def _rows(out, *args):
    """Grid-stride items of a row kernel ``(out, ..., K, log)``: one per row."""
    return out.size // args[-2]


@device.cuda_factory
def _softmax_cuda():

    @cuda.jit
    def softmax_rows(out, x, K, log):
        for r in range(cuda.grid(1), out.size // K, cuda.gridsize(1)):
            softmax_row(out, x, r, K, log)

    return device.launcher(softmax_rows, items=_rows)


@device.cuda_factory
def _softmax_grad_cuda():

    @cuda.jit
    def softmax_grad_rows(gx, y, gy, K, log):
        for r in range(cuda.grid(1), gx.size // K, cuda.gridsize(1)):
            softmax_grad_row(gx, y, gy, r, K, log)

    return device.launcher(softmax_grad_rows, items=_rows)


softmax_kernel = Kernel(cpu=_softmax_cpu, cuda=_softmax_cuda, float64_math=True)
softmax_grad_kernel = Kernel(cpu=_softmax_grad_cpu, cuda=_softmax_grad_cuda, float64_math=True)


def softmax_rows_array(rows, K, log=False):
    """Softmax (or log-softmax) of each length-K row of a contiguous array, same shape."""
    out = device.empty(rows.shape, rows.dtype, device.device_of(rows))
    if out.size:
        softmax_kernel(device.flat(out), device.flat(rows), np.int64(K), bool(log))
    return out


class Softmax(Function):
    """Softmax (``log=False``) or log-softmax (``log=True``) over ``dim``."""

    def __init__(self, dim, log):
        self.dim, self.log = dim, log

    def forward(self, x):
        self.x_shape = x.shape
        rows, _, self.K = rows_layout(x, (self.dim,))
        self.y_rows = softmax_rows_array(rows, self.K, self.log)
        return from_rows(self.y_rows, self.x_shape, (self.dim,))

    def backward(self, gy):
        gy_rows, _, K = rows_layout(gy, (self.dim,))
        gx = device.empty(gy_rows.shape, gy.dtype, device.device_of(gy))
        if gx.size:
            softmax_grad_kernel(
                device.flat(gx),
                device.flat(self.y_rows),
                device.flat(gy_rows),
                np.int64(K),
                bool(self.log),
            )
        return (from_rows(gx, self.x_shape, (self.dim,)),)


def _softmax(op, x, dim, dtype, log):
    if dim is None:
        raise TypeError(f"{op}: dim must be given (an int), as in torch.nn.functional.{op}")
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    if dtype is not None:
        x = cast(x, dtype)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")
    (d,) = normalize_dims(dim, max(x.ndim, 1), op)  # a 0-d tensor accepts dim 0 or -1
    if x.ndim == 0:  # one row of length 1
        return reshape(Softmax(0, log)(reshape(x, 1)), ())
    return Softmax(d, log)(x)


def softmax(input, dim, dtype=None):
    """``exp(x) / sum(exp(x), dim)``, computed stably (see the module docstring)."""
    return _softmax("softmax", input, dim, dtype, log=False)


def log_softmax(input, dim, dtype=None):
    """``x - log(sum(exp(x), dim))``, computed stably (see the module docstring)."""
    return _softmax("log_softmax", input, dim, dtype, log=True)
