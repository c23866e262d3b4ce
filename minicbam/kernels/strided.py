"""Strided gather and scatter: the one kernel pair behind every view-like op.

Every tensor's array is C-contiguous. A *view* of it (a permutation, a broadcast, a slice)
is described, as in NumPy, by an element offset and one stride per dimension:

    view[i_0, ..., i_{d-1}] = flat[offset + sum_k i_k * stride_k]

``gather``  materialises a view:            out.flat[i] = src.flat[offset + idx(i) . strides]
``scatter`` writes into one (its adjoint):  dst.flat[offset + idx(i) . strides] = src.flat[i]

where ``idx(i)`` is the row-major multi-index of ``i`` in ``shape``. Permute and expand
(stride 0) and basic indexing are all gathers; the gradient of basic indexing is a scatter
into zeros. A scatter is race-free only for injective views (no stride 0), which is all we
use it for. Shapes are padded to ``MAX_DIMS`` so that each dtype compiles once.
Gathering into an ``out`` of another dtype is also how dtypes are cast.
"""

import numpy as np
from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel

MAX_DIMS = 6
cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def outer_offsets(o, offset, shape, strides):
    """(source offset, output offset) of the start of outer block ``o``.

    The first three (padded) dimensions are the *outer* index, decomposed with div/mod
    once per block; the last three are walked by plain nested loops, so the per-element
    cost is an add, not six integer divisions.
    """
    o = int64(o)  # a prange index can be unsigned; unsigned % signed would give a float
    i2 = o % shape[2]
    i1 = (o // shape[2]) % shape[1]
    i0 = o // (shape[2] * shape[1])
    src = offset + i0 * strides[0] + i1 * strides[1] + i2 * strides[2]
    return src, o * shape[3] * shape[4] * shape[5]


@register_jitable
def copy_row(to, frm):
    """to[:] = frm[:] for two 1-D views of one length. A loop, not a slice assignment:
    numba's slice assignment compiles a formatted shape-mismatch error (str, join and
    unicode helpers, ~3-8 s once per process), and indices from 0 vectorise as well."""
    for j in range(to.size):
        to[j] = frm[j]


@register_jitable
def fill_row(to, value):
    """to[:] = value, as a loop (see copy_row)."""
    for j in range(to.size):
        to[j] = value


@njit(parallel=True, cache=True, nogil=True)
def _gather_cpu(out, src, offset, shape, strides):
    for o in prange(shape[0] * shape[1] * shape[2]):
        s, k = outer_offsets(o, offset, shape, strides)
        n = shape[5]
        for i3 in range(shape[3]):
            for i4 in range(shape[4]):
                s_row = s + i3 * strides[3] + i4 * strides[4]
                if strides[5] == 1:  # contiguous rows: a loop over 1-D views (vectorised)
                    copy_row(out[k : k + n], src[s_row : s_row + n])
                elif strides[5] == 0:  # a broadcast row (a sum's gradient): a fill
                    fill_row(out[k : k + n], src[s_row])
                else:
                    for i5 in range(n):
                        out[k + i5] = src[s_row + i5 * strides[5]]
                k += n


@njit(parallel=True, cache=True, nogil=True)
def _scatter_cpu(dst, src, offset, shape, strides):
    for o in prange(shape[0] * shape[1] * shape[2]):
        d, k = outer_offsets(o, offset, shape, strides)
        n = shape[5]
        for i3 in range(shape[3]):
            for i4 in range(shape[4]):
                d_row = d + i3 * strides[3] + i4 * strides[4]
                if strides[5] == 1:
                    copy_row(dst[d_row : d_row + n], src[k : k + n])
                else:
                    for i5 in range(n):
                        dst[d_row + i5 * strides[5]] = src[k + i5]
                k += n


@device.cuda_factory
def _gather_cuda():

    @cuda.jit
    def gather(out, src, offset, shape, strides):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = src[strided_offset(i, offset, shape, strides)]

    return device.launcher(gather)


@device.cuda_factory
def _scatter_cuda():

    @cuda.jit
    def scatter(dst, src, offset, shape, strides):
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[strided_offset(i, offset, shape, strides)] = src[i]

    return device.launcher(scatter, items=lambda dst, src, *rest: src.size)


@register_jitable
def strided_offset(i, offset, shape, strides):
    """Element offset of the row-major position ``i`` of ``shape`` in a strided view
    (CUDA: one element per thread, so the per-element div/mod is spread over threads)."""
    i = int64(i)
    off = offset
    for k in range(MAX_DIMS - 1, -1, -1):
        off += (i % shape[k]) * strides[k]
        i //= shape[k]
    return off


# Every view op gathers; a copy runs at memory speed, so splitting it over threads pays
# only for large arrays (smaller ones run, and compile, the serial twin alone).
gather_kernel = Kernel(
    cpu=_gather_cpu, cuda=_gather_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
scatter_kernel = Kernel(
    cpu=_scatter_cpu, cuda=_scatter_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


FILL_PARALLEL_MIN = 1 << 20  # elements; below this one thread's fill is as fast
FILL_CHUNK = 1 << 16


@njit(parallel=True, cache=True)
def _fill_parallel_cpu(out, value):
    # fixed chunks as tasks: every thread writes whole contiguous runs
    v = value[0]
    for j in prange((out.size + FILL_CHUNK - 1) // FILL_CHUNK):
        fill_row(out[j * FILL_CHUNK : min(out.size, (j + 1) * FILL_CHUNK)], v)


# ----------------------------------------------------------------------------- helpers
def contiguous_strides(shape):
    """Row-major element strides of ``shape``."""
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= s
    return tuple(reversed(strides))


def _padded(shape, strides):
    if len(shape) > MAX_DIMS:
        raise ValueError(f"at most {MAX_DIMS} dimensions are supported, got shape {shape}")
    pad = MAX_DIMS - len(shape)
    return (1,) * pad + tuple(map(int, shape)), (0,) * pad + tuple(map(int, strides))


def gather(src, shape, strides, offset=0, dtype=None):
    """A new contiguous array holding the strided view (shape, strides, offset) of ``src``."""
    if not isinstance(src, np.ndarray):
        out = device.empty(shape, dtype or src.dtype, device.CUDA)
        if out.size:
            pshape, pstrides = _padded(shape, strides)
            gather_kernel(device.flat(out), device.flat(src), int(offset), pshape, pstrides)
        return out
    out = np.empty(shape, dtype or src.dtype)  # the CPU path without the generic checks
    if out.size:
        pshape, pstrides = _padded(shape, strides)
        size = max(out.size, src.size)
        gather_kernel.call_cpu(size, out.ravel(), src.ravel(), int(offset), pshape, pstrides)
    return out


def scatter_into(dst, src, strides, offset=0):
    """Write ``src`` (contiguous) into the strided view of ``dst`` with ``src``'s shape."""
    if src.size:
        pshape, pstrides = _padded(src.shape, strides)
        scatter_kernel(device.flat(dst), device.flat(src), int(offset), pshape, pstrides)
    return dst


def permute_array(a, dims):
    """``a.transpose(dims)`` as a new contiguous array."""
    strides = contiguous_strides(a.shape)
    return gather(a, tuple(a.shape[d] for d in dims), tuple(strides[d] for d in dims))


def broadcast_array(a, shape):
    """``a`` broadcast to ``shape`` (NumPy rules) as a new contiguous array."""
    shape = tuple(shape)
    if isinstance(a, np.ndarray) and a.size == 1:  # a loss's gradient: one value, a fill
        out = np.empty(shape, a.dtype)
        if out.size >= FILL_PARALLEL_MIN:
            _fill_parallel_cpu(out.reshape(-1), a.reshape(-1))
        else:
            out.fill(a.reshape(())[()])
        return out
    lead = len(shape) - a.ndim
    src_strides = contiguous_strides(a.shape)
    strides = [0] * lead
    for k, size in enumerate(a.shape):
        strides.append(0 if size == 1 and shape[lead + k] != 1 else src_strides[k])
    return gather(a, shape, strides)


def cast_array(a, dtype):
    """``a`` converted to ``dtype`` (a new array)."""
    return gather(a, a.shape, contiguous_strides(a.shape), dtype=np.dtype(dtype))


def copy_array(a):
    return device.copy(a)
