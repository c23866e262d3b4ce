"""Matrix products and bias helpers shared by matmul, linear and conv2d.

    gemm:       out[..., i, j] = sum_k op(a)[..., i, k] * op(b)[..., k, j]
                op(a) = a, or a with its last two dims swapped when ``ta`` (same for b);
                batch dims broadcast as in NumPy.
    add_bias:   y[n, c, l] += bias[c]             (y viewed as (N, C, L))
    bias_grad:  gb[c] = sum_{n, l} gy[n, c, l]

On the CPU the product is NumPy's BLAS (``np.matmul(..., out=out)``; a transposed operand is
a strided view that BLAS reads with its transpose flag, so nothing is copied). BLAS is never
called inside ``@njit`` (a second OpenBLAS pool would fight NumPy's; docs/design.md).

On CUDA it is a shared-memory tiled kernel. Each block computes T x T output tiles of one
batch matrix in a block-stride loop; per step of T along k it stages a T x T tile of op(a)
and of op(b) in shared memory, reading the stored operand transposed when asked. The batch
index of an operand is ``(bi // div) % mod`` of the output's flat batch index ``bi``, which
covers "same batch", "no batch" and a broadcast over leading or trailing batch dims; any
other broadcast is materialised first. Both devices receive these 3-D arrays and maps (one
argument list, so the PTX check can replay CPU calls); the CPU turns them back into
broadcasting views for np.matmul.
"""

import itertools

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.kernels.strided import broadcast_array
from minicbam.kernels.task_pool import cpu_workers, pool_usable, run_tasks, single_threaded_blas

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

SIM_TILE = 8  # under the simulator every CUDA thread is a Python thread (docs/design.md)
GPU_TILE = 16
SIM_MAX_TILE_BLOCKS = 4
GPU_MAX_TILE_BLOCKS = 65535


# ----------------------------------------------------------------------------- GEMM
# Both implementations take the same arguments: out (B, M, N); a (Ba, M, K), or (Ba, K, M)
# when ta; b (Bb, K, N), or (Bb, N, K) when tb; the (div, mod) batch maps; a typed zero.
def _gemm_cpu(out, a, b, ta, tb, a_div, a_mod, b_div, b_mod, zero):
    batch, av, bv = _broadcast_views(out.shape[0], a, a_div, a_mod, b, b_div, b_mod)
    av = av.swapaxes(-1, -2) if ta else av
    bv = bv.swapaxes(-1, -2) if tb else bv
    threaded_matmul(av, bv, out.reshape(batch + out.shape[1:]))


# CPU threading of products: OpenBLAS's own threads synchronise in lock-step and spin, which
# on the shared 2-core machine made a conv-shaped sgemm 20x slower under load (72 ms against
# 3 ms single-threaded). Instead BLAS runs single-threaded and the product is split into
# independent pieces (batch entries, or row blocks of op(a)) on a small pool of Python
# threads (np.matmul releases the GIL): as fast as BLAS's threads on an idle machine
# (146 against 117 GF/s for 16 x (64x576 @ 576x1024)), and it degrades gracefully under load.
# Below this a product runs on the calling thread: a digits CNN step (products of 2-75
# MFLOP) took ~33 ms with every product there against ~43 ms when those over 4 MFLOP were
# split over the pool (loaded machine, alternating rounds); 2^27 is ~1-2 ms of one core.
MIN_THREADED_FLOPS = 1 << 27


def _split(out_shape, threads):
    """(axis of out to split, number of pieces) or None: a batch axis when it splits evenly
    or into many pieces, else the row axis M (the pieces then share op(b))."""
    *batch, M, _ = out_shape
    for ax, size in enumerate(batch):
        if size >= 2 and (size % threads == 0 or size >= 4 * threads):
            return ax, min(size, 4 * threads)
    if M >= 16 * threads:
        return len(batch), threads
    big = [ax for ax, size in enumerate(batch) if size >= 2]
    return (big[0], min(batch[big[0]], 4 * threads)) if big else None


def threaded_matmul(a, b, out):
    """np.matmul(a, b, out=out) for arrays of one ndim (size-1 batch dims broadcast), split
    over the pool when it is big enough; the products are the same either way."""
    threads = cpu_workers()
    flops = out.size * a.shape[-1]
    plan = _split(out.shape, threads) if threads > 1 and flops >= MIN_THREADED_FLOPS else None
    if plan is None or not pool_usable():
        with single_threaded_blas():
            np.matmul(a, b, out=out)
        return out
    ax, pieces = plan
    size = out.shape[ax]
    bounds = [size * i // pieces for i in range(pieces + 1)]
    run_tasks(
        _matmul_piece, [(a, b, out, ax, lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    )
    return out


def _matmul_piece(a, b, out, ax, lo, hi):
    def part(x, axis):
        if x.shape[axis] == 1 and out.shape[axis] != 1:
            return x  # broadcast along this axis
        index = [slice(None)] * x.ndim
        index[axis] = slice(lo, hi)
        return x[tuple(index)]

    row_split = ax == out.ndim - 2
    np.matmul(part(a, ax), b if row_split else part(b, ax), out=part(out, ax))


def _broadcast_views(B, a, a_div, a_mod, b, b_div, b_mod):
    """Split the flat batch B into factors at every operand's (div, div*mod) boundary (all
    products of trailing batch dims, so each divides the next): each operand is then a view
    with its own factors and size 1 elsewhere, which np.matmul broadcasts without copies."""
    cuts = sorted({1, a_div, a_div * a_mod, b_div, b_div * b_mod, B})
    factors = list(itertools.pairwise(cuts))[::-1]  # (inner, outer) products, outer first

    def view(x, div, mod):
        shape = tuple(hi // lo if div <= lo and hi <= div * mod else 1 for lo, hi in factors)
        return x.reshape(shape + x.shape[1:])

    return tuple(hi // lo for lo, hi in factors), view(a, a_div, a_mod), view(b, b_div, b_mod)


def batch_map(shape, batch):
    """(div, mod) with operand batch index = (bi // div) % mod, or None if not expressible."""
    shape = (1,) * (len(batch) - len(shape)) + tuple(shape)
    dims = [k for k, s in enumerate(shape) if s != 1]
    if not dims:
        return 1, 1
    lo, hi = dims[0], dims[-1] + 1
    if any(shape[k] != batch[k] for k in range(lo, hi)):
        return None
    return int(np.prod(batch[hi:], dtype=np.int64)), int(np.prod(batch[lo:hi], dtype=np.int64))


def _as_batched(x, batch):
    """(x as a 3-D (B_x, rows, cols) array, (div, mod)) for the batch-flattened GEMM."""
    shape = tuple(x.shape)  # a simulator array's shape rejects negative indices
    mapping = batch_map(shape[:-2], batch)
    if mapping is None:
        x = broadcast_array(x, tuple(batch) + shape[-2:])
        mapping = (1, int(np.prod(batch, dtype=np.int64)))
    return x.reshape((mapping[1],) + shape[-2:]), mapping


@device.cuda_factory
def _gemm_cuda():
    sim = device.cuda_backend() == "sim"
    T = SIM_TILE if sim else GPU_TILE  # a closure constant: fixed at compile time
    max_blocks = SIM_MAX_TILE_BLOCKS if sim else GPU_MAX_TILE_BLOCKS

    @cuda.jit
    def gemm(out, a, b, ta, tb, a_div, a_mod, b_div, b_mod, zero):
        sa = cuda.shared.array((T, T), a.dtype)
        sb = cuda.shared.array((T, T), a.dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        M = out.shape[1]
        N = out.shape[2]
        K = a.shape[1] if ta else a.shape[2]
        tiles_n = (N + T - 1) // T
        per_batch = ((M + T - 1) // T) * tiles_n
        # every thread of a block runs the same iterations, so each syncthreads is uniform
        for t in range(cuda.blockIdx.x, out.shape[0] * per_batch, cuda.gridDim.x):
            bi = t // per_batch
            i = ((t % per_batch) // tiles_n) * T + ty
            j = (t % tiles_n) * T + tx
            ab = (bi // a_div) % a_mod
            bb = (bi // b_div) % b_mod
            acc = zero
            for k0 in range(0, K, T):
                ka = k0 + tx
                kb = k0 + ty
                va = zero
                if i < M and ka < K:
                    va = a[ab, ka, i] if ta else a[ab, i, ka]
                vb = zero
                if kb < K and j < N:
                    vb = b[bb, j, kb] if tb else b[bb, kb, j]
                sa[ty, tx] = va
                sb[ty, tx] = vb
                cuda.syncthreads()
                for k in range(T):
                    acc += sa[ty, k] * sb[k, tx]
                cuda.syncthreads()  # before the next step overwrites the tiles
            if i < M and j < N:
                out[bi, i, j] = acc

    def config(out, *args):
        tiles = out.shape[0] * -(-out.shape[1] // T) * -(-out.shape[2] // T)
        return min(tiles, max_blocks), (T, T)

    return device.launcher(gemm, config=config)


gemm_kernel = Kernel(cpu=_gemm_cpu, cuda=_gemm_cuda)


def gemm(out, a, b, ta=False, tb=False):
    """``out = op(a) @ op(b)`` (see the module docstring); returns ``out``.

    ``out`` is contiguous with the broadcast batch shape; a and b are contiguous."""
    if out.size == 0:
        return out
    K = tuple(a.shape)[-2 if ta else -1]
    if K == 0:
        return device_fill_zero(out)
    batch, (M, N) = tuple(out.shape)[:-2], tuple(out.shape)[-2:]
    a3, (a_div, a_mod) = _as_batched(a, batch)
    b3, (b_div, b_mod) = _as_batched(b, batch)
    out3 = out.reshape((out.size // (M * N), M, N))
    gemm_kernel(out3, a3, b3, bool(ta), bool(tb), a_div, a_mod, b_div, b_mod, out.dtype.type(0))
    return out


def device_fill_zero(out):
    device.fill_kernel(device.flat(out), out.dtype.type(0))
    return out


def matmul_new(a, b, ta=False, tb=False):
    """A new array ``op(a) @ op(b)`` with NumPy batch broadcasting."""
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    M = a_shape[-1] if ta else a_shape[-2]
    N = b_shape[-2] if tb else b_shape[-1]
    batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    out = device.empty(tuple(batch) + (M, N), a.dtype, device.device_of(a))
    return gemm(out, a, b, ta, tb)


# ----------------------------------------------------------------------------- bias
@register_jitable
def add_bias_at(y, bias, i, C, L):
    y[i] += bias[(i // L) % C]


@register_jitable
def bias_grad_at(gy, c, C, L, zero):
    """sum over n, l of gy[n, c, l] for gy (N, C, L) flattened; per-n partial sums keep
    float32 rounding error at the size of one row, without float64 on the GPU."""
    acc = zero
    for n in range(gy.size // (C * L)):
        base = (n * C + c) * L
        part = zero
        for k in range(L):
            part += gy[base + k]
        acc += part
    return acc


@njit(parallel=True, cache=True)
def _add_bias_cpu(y, bias, C, L):
    for i in prange(y.size):
        add_bias_at(y, bias, i, C, L)


@njit(parallel=True, cache=True)
def _bias_grad_cpu(gb, gy, C, L, zero):
    for c in prange(C):
        gb[c] = bias_grad_at(gy, c, C, L, zero)


@device.cuda_factory
def _add_bias_cuda():

    @cuda.jit
    def add_bias(y, bias, C, L):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            add_bias_at(y, bias, i, C, L)

    return device.launcher(add_bias)


@device.cuda_factory
def _bias_grad_cuda():

    @cuda.jit
    def bias_grad(gb, gy, C, L, zero):
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            gb[c] = bias_grad_at(gy, c, C, L, zero)

    return device.launcher(bias_grad)


add_bias_kernel = Kernel(cpu=_add_bias_cpu, cuda=_add_bias_cuda)
bias_grad_kernel = Kernel(cpu=_bias_grad_cpu, cuda=_bias_grad_cuda)


def add_bias(y, bias, C, L):
    """In place: y (N, C, L) += bias[c] for every channel c (y is contiguous)."""
    if y.size:
        add_bias_kernel(device.flat(y), bias, C, L)
    return y


def bias_grad(gy, C, L):
    """A new (C,) array: gy (N, C, L) summed over n and l."""
    gb = device.empty((C,), gy.dtype, device.device_of(gy))
    if C:
        bias_grad_kernel(gb, device.flat(gy), C, L, gy.dtype.type(0))
    return gb


# ----------------------------------------------------------------------------- accumulate
@njit(parallel=True, cache=True)
def _add_into_cpu(out, x):
    for i in prange(out.size):
        out[i] += x[i]


@device.cuda_factory
def _add_into_cuda():

    @cuda.jit
    def add_into(out, x):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] += x[i]

    return device.launcher(add_into)


add_into_kernel = Kernel(cpu=_add_into_cpu, cuda=_add_into_cuda)


def add_into(out, x):
    """In place: out += x (same shape, both contiguous)."""
    if out.size:
        add_into_kernel(device.flat(out), device.flat(x))
    return out
