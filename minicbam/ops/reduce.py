"""Sum and mean over dimensions.

    y[keep] = sum_{r in reduced dims} x[keep, r]            dy/dx = 1 (broadcast back)
    mean = sum / K,  K = number of reduced elements          gx = broadcast(gy) / K

The reduced dimensions are moved last (a gather, skipped when they already are), so
every reduction is a row reduction of an (R, K) matrix: ``out[r] = sum_k x[r * K + k]``,
one row per CPU iteration; a few long rows (fewer than 8, a loss's sum to one value) are cut
into fixed ROW_SEGMENT-element segments, one per CPU iteration, whose float64 partials are
then added in order, so the bits depend on the shape only. Reducing *leading* dimensions (a batch: bias gradients,
broadcast gradients, per-sample partial sums) instead sums the columns of an (R, J) matrix
in place, ``out[j] = sum_r x[r * J + j]``, without moving anything. Sums accumulate in
float64 for float32 inputs too, so results hardly depend on the sizes or the device.

On CUDA (kernels/two_stage.py) a short row is one thread's; longer rows get one block
each, or several when rows are few (a sum to one value), whose float64 partials one block
per row then adds in a fixed tree; column sums split many rows into chunks the same way.
The grouping depends only on the shape, so every run gives the same bits; they may differ
from the CPU's sequential sums in the last float64 bit.
"""

import functools
import math

import numpy as np
from numba import njit, prange

from minicbam import device
from minicbam.device import Kernel
from minicbam.dtypes import sum_type
from minicbam.function import Function
from minicbam.kernels import block_reduce, two_stage
from minicbam.kernels.strided import broadcast_array, permute_array

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


ROW_SEGMENT = 1 << 16  # elements per CPU task when a few long rows (a loss's sum) are summed


# reassoc lets the row loops vectorise (a fixed order, set by the compiled code); NaN and
# inf keep their meaning (no nnan / ninf flags)
@njit(inline="always", fastmath={"reassoc", "nsz"})
def _sum_view(row, zero):
    """zero + the sum of the 1-D view ``row``, in zero's dtype."""
    acc = zero
    for k in range(row.size):
        acc += row[k]
    return acc


@njit(parallel=True, cache=True, fastmath={"reassoc", "nsz"})
def _sum_rows_cpu(out, x, K, zero):
    R = out.size
    S = (K + ROW_SEGMENT - 1) // ROW_SEGMENT
    # The loops index 1-D views (row = x[a:b]; row[k] for k in range(row.size)), not x[r * K
    # + k]: a computed index keeps a negative-index check per element, which stops LLVM
    # vectorising the sum; iterating over the view (for v in row) ran 4x slower than indexing
    # it on a 4M total (docs/performance.md, "Sums").
    if R >= 8 or S < 2:  # enough rows to share out, or short ones: one task per row
        for r in prange(R):
            out[r] = _sum_view(x[r * K : (r + 1) * K], zero)
        return
    # few long rows: fixed segments of ROW_SEGMENT as tasks, their partials added in order,
    # so the bits depend on the shape only (not on the thread count)
    partials = np.full(R * S, zero)
    for p in prange(R * S):
        r, j = p // S, p % S
        partials[p] = _sum_view(
            x[r * K + j * ROW_SEGMENT : r * K + min(K, (j + 1) * ROW_SEGMENT)], zero
        )
    for r in range(R):
        acc = zero
        for j in range(S):
            acc += partials[r * S + j]
        out[r] = acc


@functools.cache
@device.cuda_factory
def _sum_segments_kernel(kind):
    """Stage kernel of the row sums (kernels/two_stage.py): ``out[p]`` = the sum of segment
    ``p % S`` of row ``p // S`` of the (out.size / S, K) rows ``x``, accumulated (thread
    slices, then the block tree) in float64 for ``kind`` "f" and in int64 for "i"."""
    T = block_reduce.block_threads()
    acc_dtype = np.float64 if kind == "f" else np.int64
    block_sum = block_reduce.block_sum_device()

    @cuda.jit
    def sum_segments(out, x, K, S, zero):
        buf = cuda.shared.array(T, acc_dtype)
        L = (K + S - 1) // S
        # every thread of a block visits the same pairs p, so block_sum's barriers are uniform
        for p in range(cuda.blockIdx.x, out.size, cuda.gridDim.x):
            base = (p // S) * K
            lo = (p % S) * L
            acc = zero
            for k in range(lo + cuda.threadIdx.x, min(K, lo + L), T):  # coalesced
                acc += x[base + k]
            total = block_sum(buf, acc)
            if cuda.threadIdx.x == 0:
                out[p] = total

    return sum_segments


@device.cuda_factory
def _sum_rows_cuda():

    @cuda.jit
    def sum_rows(out, x, K, zero):
        for r in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            acc = zero
            for k in range(K):
                acc += x[r * K + k]
            out[r] = acc

    def stages(gpu, out, x, K, zero):
        """Short rows: one thread per row. Longer ones: S blocks per row, then (S > 1) one
        block per row over the S partials."""
        R = out.size
        if two_stage.small_row(K, gpu):
            return [(sum_rows, *two_stage.thread_grid(R, gpu), R, (out, x, K, zero))]
        acc_dtype = np.asarray(zero).dtype
        seg = _sum_segments_kernel(acc_dtype.kind)
        T = two_stage.threads(gpu)
        S = two_stage.segments(R, K, gpu)
        if S == 1:
            return [(seg, two_stage.blocks(R, gpu), T, x.size, (out, x, K, 1, zero))]
        partials = device.empty((R * S,), acc_dtype, device.device_of(out))
        return [
            (seg, two_stage.blocks(R * S, gpu), T, x.size, (partials, x, K, S, zero)),
            (seg, two_stage.blocks(R, gpu), T, R * S, (out, partials, S, 1, zero)),
        ]

    return device.launcher(sum_rows, stages=stages)


sum_rows_kernel = Kernel(
    cpu=_sum_rows_cpu,
    cuda=_sum_rows_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
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
            row = x[r * J + j0 : r * J + j1]  # a view: the add vectorises (4-5x, as the rows')
            for j in range(j1 - j0):
                acc[j] += row[j]
        for j in range(j1 - j0):
            out[j0 + j] = acc[j]


@device.cuda_factory
def _sum_columns_cuda():

    @cuda.jit
    def sum_column_chunks(out, x, R, J, S, zero):
        # out[s * J + j] = sum of x[r * J + j] over the rows r of chunk s (L rows each);
        # neighbouring threads take neighbouring columns j (coalesced)
        L = (R + S - 1) // S
        for p in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            s = p // J
            j = p % J
            acc = zero
            for r in range(s * L, min(R, s * L + L)):
                acc += x[r * J + j]
            out[p] = acc

    def stages(gpu, out, x, R, zero):
        """Few columns and many rows: S chunks of rows, then the (S, J) partials summed."""
        J = out.size
        S = two_stage.column_chunks(R, J, gpu)
        if S == 1:
            return [(sum_column_chunks, *two_stage.thread_grid(J, gpu), J, (out, x, R, J, 1, zero))]
        partials = device.empty((S * J,), np.asarray(zero).dtype, device.device_of(out))
        chunks = (partials, x, R, J, S, zero)
        return [
            (sum_column_chunks, *two_stage.thread_grid(S * J, gpu), S * J, chunks),
            (sum_column_chunks, *two_stage.thread_grid(J, gpu), J, (out, partials, S, J, 1, zero)),
        ]

    return device.launcher(sum_column_chunks, stages=stages)


sum_columns_kernel = Kernel(
    cpu=_sum_columns_cpu,
    cuda=_sum_columns_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
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
