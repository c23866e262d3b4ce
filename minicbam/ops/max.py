"""Maxima over dimensions, with the reduced dimensions laid out as rows of length K
(see reduce.py).

    amax:  y[r] = max_k x[r, k]
           gx[r, k] = gy[r] * [x[r, k] == y[r]] / #ties(r)   (ties share the gradient,
           as in PyTorch's amax)
    max(dim): (values, indices) with indices the FIRST maximum of each row;
           gx[r, k] = gy[r] * [k == index[r]]
    argmax: the indices alone (no gradient).

NaN propagates: a row holding NaN has maximum NaN (its index points at the NaN), and amax's
gradient of such a row is NaN (no element equals NaN; PyTorch's 0/0).

On CUDA short rows are one thread's and longer ones are split over blocks as the sums are
(kernels/two_stage.py): each block finds its segment's (maximum, first position) with the
block tree (a tie keeps the smaller position, NaN wins), then one block per row picks
among the segments' candidates by the same rule, so the index is the row's first maximum.
"""

import collections
import functools
import math

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.kernels import block_reduce, two_stage
from minicbam.ops.reduce import from_rows, keepdim_shape, normalize_dims, rows_layout
from minicbam.tensor import Tensor

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

MaxResult = collections.namedtuple("MaxResult", ["values", "indices"])


@register_jitable
def row_argmax(x, r, K):
    best = 0
    for k in range(1, K):
        v, b = x[r * K + k], x[r * K + best]
        if v > b or (v != v and b == b):  # v != v: NaN wins, as in PyTorch
            best = k
    return best


@register_jitable
def amax_grad_row(gx, x, m, gy, r, K):
    ties = 0
    for k in range(K):
        if x[r * K + k] == m[r]:
            ties += 1
    for k in range(K):
        if ties == 0:  # the maximum is NaN (no element equals it): NaN everywhere, as PyTorch
            gx[r * K + k] = gy[r] * (m[r] - m[r])
        elif x[r * K + k] == m[r]:
            gx[r * K + k] = gy[r] / ties
        else:
            gx[r * K + k] = 0


@register_jitable
def index_grad_row(gx, index, gy, r, K):
    for k in range(K):
        if k == index[r]:
            gx[r * K + k] = gy[r]
        else:
            gx[r * K + k] = 0


@njit(parallel=True, cache=True)
def _max_rows_cpu(values, indices, x, K):
    for r in prange(values.size):
        best = row_argmax(x, r, K)
        indices[r] = best
        values[r] = x[r * K + best]


@njit(parallel=True, cache=True)
def _amax_grad_cpu(gx, x, m, gy, K):
    for r in prange(m.size):
        amax_grad_row(gx, x, m, gy, r, K)


@njit(parallel=True, cache=True)
def _index_grad_cpu(gx, index, gy, K):
    for r in prange(index.size):
        index_grad_row(gx, index, gy, r, K)


@functools.cache
@device.cuda_factory
def _max_segments_kernel():
    """Stage kernel of the row maxima (kernels/two_stage.py): ``(values[p], indices[p])`` =
    the first maximum of segment ``p % S`` of row ``p // S`` of the rows ``x`` (K elements)
    and its position in the row; ``chained``: ``x`` holds stage-1 maxima whose positions
    are ``x_index`` (-1: an empty segment), else the positions are k itself."""
    T = block_reduce.block_threads()
    block_argmax = block_reduce.block_argmax_device()

    @cuda.jit
    def max_segments(values, indices, x, x_index, K, S, chained):
        vals = cuda.shared.array(T, x.dtype)
        idxs = cuda.shared.array(T, np.int64)
        L = (K + S - 1) // S
        for p in range(cuda.blockIdx.x, values.size, cuda.gridDim.x):  # uniform per block
            base = (p // S) * K
            lo = (p % S) * L
            best = x[base]
            where = -1  # nothing yet
            # a thread meets its candidates in increasing position: strict > keeps the first
            for k in range(lo + cuda.threadIdx.x, min(K, lo + L), T):
                v = x[base + k]
                j = x_index[base + k] if chained else k
                if j >= 0 and (where < 0 or v > best or (math.isnan(v) and not math.isnan(best))):
                    best = v
                    where = j
            best, where = block_argmax(vals, idxs, best, where)
            if cuda.threadIdx.x == 0:
                values[p] = best
                indices[p] = where

    return max_segments


@device.cuda_factory
def _max_rows_cuda():

    @cuda.jit
    def max_rows(values, indices, x, K):
        for r in range(cuda.grid(1), values.size, cuda.gridsize(1)):
            best = row_argmax(x, r, K)
            indices[r] = best
            values[r] = x[r * K + best]

    def stages(gpu, values, indices, x, K):
        """Short rows: one thread per row. Longer ones: S blocks per row, then (S > 1) one
        block per row over the S (maximum, position) partials."""
        R = values.size
        if two_stage.small_row(K, gpu):
            return [(max_rows, *two_stage.thread_grid(R, gpu), R, (values, indices, x, K))]
        seg = _max_segments_kernel()
        T = two_stage.threads(gpu)
        S = two_stage.segments(R, K, gpu)
        if S == 1:
            args = (values, indices, x, indices, K, 1, False)
            return [(seg, two_stage.blocks(R, gpu), T, x.size, args)]
        dev = device.device_of(values)
        part_values = device.empty((R * S,), x.dtype, dev)
        part_indices = device.empty((R * S,), np.int64, dev)
        first = (part_values, part_indices, x, part_indices, K, S, False)
        second = (values, indices, part_values, part_indices, S, 1, True)
        return [
            (seg, two_stage.blocks(R * S, gpu), T, x.size, first),
            (seg, two_stage.blocks(R, gpu), T, R * S, second),
        ]

    return device.launcher(max_rows, stages=stages)


@device.cuda_factory
def _amax_grad_cuda():

    @cuda.jit
    def amax_grad(gx, x, m, gy, K):
        for r in range(cuda.grid(1), m.size, cuda.gridsize(1)):
            amax_grad_row(gx, x, m, gy, r, K)

    return device.launcher(amax_grad, items=lambda gx, x, m, gy, K: m.size)


@device.cuda_factory
def _index_grad_cuda():

    @cuda.jit
    def index_grad(gx, index, gy, K):
        for r in range(cuda.grid(1), index.size, cuda.gridsize(1)):
            index_grad_row(gx, index, gy, r, K)

    return device.launcher(index_grad, items=lambda gx, index, gy, K: index.size)


max_rows_kernel = Kernel(
    cpu=_max_rows_cpu, cuda=_max_rows_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
# float64_math: the share gy / #ties divides by an integer count.
amax_grad_kernel = Kernel(
    cpu=_amax_grad_cpu,
    cuda=_amax_grad_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
index_grad_kernel = Kernel(
    cpu=_index_grad_cpu, cuda=_index_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


def max_rows(x, dims):
    """(values, indices) over ``dims`` in the kept shape, plus the (R, K) rows used."""
    rows, keep_shape, K = rows_layout(x, dims)
    if K == 0:
        raise ValueError(f"max: cannot reduce over an empty dimension (shape {x.shape})")
    dev = device.device_of(x)
    values = device.empty(keep_shape, x.dtype, dev)
    indices = device.empty(keep_shape, np.int64, dev)
    if values.size:
        max_rows_kernel(device.flat(values), device.flat(indices), device.flat(rows), K)
    return values, indices, rows, K


class _MaxBase(Function):
    def __init__(self, dims, keepdim):
        self.dims, self.keepdim = dims, keepdim

    def _shape_out(self, a):
        return a.reshape(keepdim_shape(self.x_shape, self.dims)) if self.keepdim else a

    def _unpermute(self, g_rows):
        """Row-layout gradient back to x's layout."""
        return from_rows(g_rows, self.x_shape, self.dims)


class AMax(_MaxBase):
    def forward(self, x):
        self.x_shape = x.shape
        self.values, _, self.rows, self.K = max_rows(x, self.dims)
        return self._shape_out(self.values)

    def backward(self, gy):
        g_rows = device.empty(self.rows.shape, gy.dtype, device.device_of(gy))
        if g_rows.size:
            amax_grad_kernel(
                device.flat(g_rows),
                device.flat(self.rows),
                device.flat(self.values),
                device.flat(gy),
                self.K,
            )
        return (self._unpermute(g_rows),)


class MaxWithIndex(_MaxBase):
    def forward(self, x):
        self.x_shape = x.shape
        values, self.indices, rows, self.K = max_rows(x, self.dims)
        self.rows_shape = rows.shape
        return self._shape_out(values)

    def backward(self, gy):
        g_rows = device.empty(self.rows_shape, gy.dtype, device.device_of(gy))
        if g_rows.size:
            index_grad_kernel(
                device.flat(g_rows), device.flat(self.indices), device.flat(gy), self.K
            )
        return (self._unpermute(g_rows),)


def check_nonempty(op, shape, dims):
    """PyTorch's IndexError for a maximum over no elements (it has no value)."""
    empty = [d for d in dims if shape[d] == 0]
    if empty:
        raise IndexError(
            f"{op}: expected reduction dim {empty[0]} to have non-zero size, got shape {shape}"
        )


def amax(x, dim=None, keepdim=False):
    if dim is not None and not isinstance(dim, (int, np.integer)) and len(dim) == 0:
        dim = None
    dims = normalize_dims(dim, x.ndim, "amax")
    check_nonempty("amax", x.shape, dims)
    return AMax(dims, keepdim)(x)


def max(x, dim=None, keepdim=False):
    """``max(x)``: the largest element; ``max(x, dim)``: (values, indices) along ``dim``."""
    if dim is None:
        check_nonempty("max", x.shape, tuple(range(x.ndim)))
        return amax(x)
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"max: dim must be an int, got {type(dim).__name__}")
    dims = normalize_dims(dim, x.ndim, "max")
    check_nonempty("max", x.shape, dims)
    fn = MaxWithIndex(dims, keepdim)
    values = fn(x)
    return MaxResult(values, Tensor(fn.indices.reshape(values.shape)))


def argmax(x, dim=None, keepdim=False):
    if dim is None:
        check_nonempty("argmax", (x.numel(),), (0,))
        _, indices, _, _ = max_rows(x.data.reshape(x.numel()), (0,))
        return Tensor(indices)
    dims = normalize_dims(dim, x.ndim, "argmax")
    check_nonempty("argmax", x.shape, dims)
    _, indices, _, _ = max_rows(x.data, dims)
    return Tensor(indices.reshape(keepdim_shape(x.shape, dims)) if keepdim else indices)
