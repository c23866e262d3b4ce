"""Sum and mean over dimensions.

    y[keep] = sum_{r in reduced dims} x[keep, r]            dy/dx = 1 (broadcast back)
    mean = sum / K,  K = number of reduced elements          gx = broadcast(gy) / K

The reduced dimensions are moved last (a gather, skipped when they already are), so
every reduction is a row reduction of an (R, K) matrix: ``out[r] = sum_k x[r * K + k]``,
one row per CPU iteration / CUDA thread. Reducing *leading* dimensions (a batch: bias
gradients, broadcast gradients, per-sample partial sums) instead sums the columns of an
(R, J) matrix in place, ``out[j] = sum_r x[r * J + j]``, without moving anything. Sums
accumulate in float64 for float32 inputs too, so results do not depend on the sizes or
the device.
"""

import math

import numpy as np
from numba import njit, prange

from minicbam import device
from minicbam.device import Kernel
from minicbam.dtypes import sum_type
from minicbam.function import Function
from minicbam.kernels.strided import broadcast_array, permute_array

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@njit(parallel=True, cache=True)
def _sum_rows_cpu(out, x, K, zero):
    for r in prange(out.size):
        acc = zero
        for k in range(K):
            acc += x[r * K + k]
        out[r] = acc


@device.cuda_factory
def _sum_rows_cuda():

    @cuda.jit
    def sum_rows(out, x, K, zero):
        for r in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            acc = zero
            for k in range(K):
                acc += x[r * K + k]
            out[r] = acc

    return device.launcher(sum_rows)


sum_rows_kernel = Kernel(
    cpu=_sum_rows_cpu, cuda=_sum_rows_cuda, float64_math=True, serial_small=True
)

COLUMN_BLOCK = 256  # columns per CPU task: the inner loop runs along contiguous memory


@njit(parallel=True, cache=True)
def _sum_columns_cpu(out, x, R, zero):
    J = out.size
    for block in prange((J + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        j0 = block * COLUMN_BLOCK
        j1 = min(J, j0 + COLUMN_BLOCK)
        acc = np.full(j1 - j0, zero)
        for r in range(R):
            for j in range(j0, j1):
                acc[j - j0] += x[r * J + j]
        for j in range(j0, j1):
            out[j] = acc[j - j0]


@device.cuda_factory
def _sum_columns_cuda():

    @cuda.jit
    def sum_columns(out, x, R, zero):
        J = out.size
        for j in range(cuda.grid(1), J, cuda.gridsize(1)):  # neighbouring threads, neighbouring j
            acc = zero
            for r in range(R):
                acc += x[r * J + j]
            out[j] = acc

    return device.launcher(sum_columns)


sum_columns_kernel = Kernel(
    cpu=_sum_columns_cpu, cuda=_sum_columns_cuda, float64_math=True, serial_small=True
)


def normalize_dims(dim, ndim, op="sum"):
    """Sorted, non-negative, unique dims from None, an int or a sequence of ints.

    As in PyTorch, an empty sequence means every dim, and a 0-d tensor accepts dim 0 or -1
    (it has nothing to reduce: the result is ``()``)."""
    dims = (dim,) if dim is None or isinstance(dim, (int, np.integer)) else tuple(dim)
    if dim is None or not dims:
        return tuple(range(ndim))
    out = []
    for d in dims:
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(
                f"{op}: dimension {d} out of range for a tensor of {ndim} dimensions "
                f"(expected in [{-max(ndim, 1)}, {max(ndim, 1) - 1}])"
            )
        out.append(d % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: dimension {dim} repeated")
    return tuple(sorted(d for d in out if d < ndim))


def rows_layout(x, dims):
    """(x as (R, K) contiguous rows, kept shape, reduced size K)."""
    keep = tuple(d for d in range(x.ndim) if d not in dims)
    order = keep + dims
    rows = x if order == tuple(range(x.ndim)) else permute_array(x, order)
    keep_shape = tuple(x.shape[d] for d in keep)
    K = math.prod(x.shape[d] for d in dims)
    return rows, keep_shape, K


def from_rows(rows, x_shape, dims):
    """Undo rows_layout: (kept..., reduced...) rows back to x's layout (x_shape)."""
    keep = tuple(d for d in range(len(x_shape)) if d not in dims)
    order = keep + tuple(dims)
    g = rows.reshape(tuple(x_shape[d] for d in order))
    if order == tuple(range(len(order))):
        return g
    return permute_array(g, tuple(int(d) for d in np.argsort(order)))


def keepdim_shape(shape, dims):
    return tuple(1 if d in dims else s for d, s in enumerate(shape))


_FLOAT_ZERO, _INT_ZERO = np.float64(0), np.int64(0)  # the accumulators' start


def sum_array(x, dims, keepdim=False):
    """Floats sum (accumulating in float64) to their dtype; integers and bools sum exactly,
    in int64, to int64 (PyTorch's rule)."""
    keep_shape = tuple(s for d, s in enumerate(x.shape) if d not in dims)
    out_dtype = sum_type(x.dtype)
    zero = _FLOAT_ZERO if out_dtype.kind == "f" else _INT_ZERO
    out = device.empty(keep_shape, out_dtype, device.device_of(x))
    if out.size and dims == tuple(range(len(dims))) and keep_shape:
        R = math.prod(x.shape[: len(dims)])
        sum_columns_kernel(device.flat(out), device.flat(x), R, zero)
    elif out.size:
        rows, _, K = rows_layout(x, dims)
        sum_rows_kernel(device.flat(out), device.flat(rows), K, zero)
    return out.reshape(keepdim_shape(x.shape, dims)) if keepdim else out


def sum_to_array(g, shape):
    """Sum ``g`` over the dimensions that broadcasting added or stretched to reach ``shape``."""
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(
        lead + k for k, s in enumerate(shape) if s == 1 and g.shape[lead + k] != 1
    )
    if not dims:
        return g
    return sum_array(g, dims).reshape(shape)


class Sum(Function):
    saves_tensors = False

    def __init__(self, dims, keepdim):
        self.dims, self.keepdim = dims, keepdim

    def forward(self, x):
        self.x_shape = x.shape
        return sum_array(x, self.dims, self.keepdim)

    def backward(self, gy):
        gy = gy.reshape(keepdim_shape(self.x_shape, self.dims))
        return (broadcast_array(gy, self.x_shape),)


def sum(x, dim=None, keepdim=False):
    return Sum(normalize_dims(dim, x.ndim, "sum"), keepdim)(x)


def mean(x, dim=None, keepdim=False):
    dims = normalize_dims(dim, x.ndim, "mean")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"mean: expected a floating-point tensor, got dtype {x.dtype}")
    count = math.prod(x.shape[d] for d in dims)
    return Sum(dims, keepdim)(x) * (1.0 / count if count else float("nan"))
