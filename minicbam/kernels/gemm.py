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
batch matrix in a block-stride loop, each thread a P x P block of the tile kept in
registers; per step of D along k it stages a T x D tile of op(a) and a D x T tile of op(b)
in shared memory, the threads reading each stored operand in its memory order (coalesced,
transposed or not) and every value a thread loads from a tile serving P products
(T, P, D = 64, 4, 16 on a GPU: 256 threads of 16 outputs each; 8, 2, 4 under the
simulator). The batch
index of an operand is ``(bi // div) % mod`` of the output's flat batch index ``bi``, which
covers "same batch", "no batch" and a broadcast over leading or trailing batch dims; any
other broadcast is materialised first. Both devices receive these 3-D arrays and maps (one
argument list, so the PTX check can replay CPU calls); the CPU turns them back into
broadcasting views for np.matmul.
"""

import functools
import itertools

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.kernels import block_reduce, two_stage
from minicbam.kernels.strided import broadcast_array
from minicbam.kernels.task_pool import cpu_workers, pool_usable, run_tasks, single_threaded_blas

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

# Output tiles of the CUDA GEMM: GPU_TILE^2 outputs per block, GPU_PER_THREAD^2 per thread
# (16 x 16 = 256 threads, 16 outputs each, k staged 16 at a time). Under the simulator every
# CUDA thread is a Python thread (docs/design.md): 8 x 8 tiles of 4 x 4 threads.
SIM_TILE, SIM_PER_THREAD, SIM_DEPTH = 8, 2, 4
GPU_TILE, GPU_PER_THREAD, GPU_DEPTH = 64, 4, 16
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
# Below this many multiply-adds OpenBLAS runs a product on one thread by itself (its
# interface's SMP threshold; measured: a 64 x 64 x 64 sgemm used 1.00 cores with two BLAS
# threads, a 128^3 one 1.99), so the thread-count switch (~10 us, twice a small product's
# time) is skipped.
BLAS_SERIAL_FLOPS = 1 << 18


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
    over the pool when it is big enough. The pieces compute the same product; whether it
    rounds identically to the whole is the BLAS kernel's business (OpenBLAS's SkylakeX sgemm:
    bit for bit; its Haswell kernel: the last bits may differ)."""
    flops = out.size * a.shape[-1]
    if flops < BLAS_SERIAL_FLOPS:
        np.matmul(a, b, out=out)
        return out
    threads = cpu_workers()
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
    if B == 1:  # one product (every Linear): no factors to work out
        return (), a[0], b[0]
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
    if not batch and len(shape) == 2:  # one product (every Linear): nothing to map
        return x.reshape((1, *shape)), (1, 1)
    mapping = batch_map(shape[:-2], batch)
    if mapping is None:
        x = broadcast_array(x, tuple(batch) + shape[-2:])
        mapping = (1, int(np.prod(batch, dtype=np.int64)))
    return x.reshape((mapping[1],) + shape[-2:]), mapping


@device.cuda_factory
def make_gemm_cuda(tile, per_thread, depth, max_blocks):
    """The CUDA GEMM launcher for ``tile`` x ``tile`` output tiles, each thread computing a
    ``per_thread`` x ``per_thread`` register block of them, ``depth`` steps of k per stage.

    A block has (tile / per_thread)^2 threads; thread (ty, tx) owns the outputs at rows
    ty + m * TD and columns tx + n * TD of the tile (TD = tile / per_thread, m, n <
    per_thread), so neighbouring threads write neighbouring columns."""
    TD = tile // per_thread
    NT = TD * TD
    R = per_thread
    BK = depth
    # shared tiles padded by one column: the transposed stores then spread over the banks
    SA_SHAPE = (tile, depth + 1)
    SB_SHAPE = (depth, tile + 1)

    @cuda.jit
    def gemm(out, a, b, ta, tb, a_div, a_mod, b_div, b_mod, zero):
        # sa[i, k] = op(a)[i0 + i, k0 + k], sb[k, j] = op(b)[k0 + k, j0 + j]
        sa = cuda.shared.array(SA_SHAPE, a.dtype)
        sb = cuda.shared.array(SB_SHAPE, a.dtype)
        acc = cuda.local.array((R, R), a.dtype)
        brow = cuda.local.array(R, a.dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        lt = ty * TD + tx  # neighbouring tx, neighbouring lt
        M = out.shape[1]
        N = out.shape[2]
        K = a.shape[1] if ta else a.shape[2]
        tiles_n = (N + tile - 1) // tile
        per_batch = ((M + tile - 1) // tile) * tiles_n
        # every thread of a block runs the same iterations, so each syncthreads is uniform
        for t in range(cuda.blockIdx.x, out.shape[0] * per_batch, cuda.gridDim.x):
            bi = t // per_batch
            i0 = ((t % per_batch) // tiles_n) * tile
            j0 = (t % tiles_n) * tile
            ab = (bi // a_div) % a_mod
            bb = (bi // b_div) % b_mod
            for m in range(R):
                for n in range(R):
                    acc[m, n] = zero
            for k0 in range(0, K, BK):
                # e walks each tile in its stored operand's memory order: neighbouring
                # threads read neighbouring addresses whether or not it is transposed
                for e in range(lt, tile * BK, NT):
                    ii, kk = (e % tile, e // tile) if ta else (e // BK, e % BK)
                    v = zero
                    if i0 + ii < M and k0 + kk < K:
                        v = a[ab, k0 + kk, i0 + ii] if ta else a[ab, i0 + ii, k0 + kk]
                    sa[ii, kk] = v
                for e in range(lt, tile * BK, NT):
                    jj, kk = (e // BK, e % BK) if tb else (e % tile, e // tile)
                    v = zero
                    if k0 + kk < K and j0 + jj < N:
                        v = b[bb, j0 + jj, k0 + kk] if tb else b[bb, k0 + kk, j0 + jj]
                    sb[kk, jj] = v
                cuda.syncthreads()
                for k in range(BK):
                    for n in range(R):
                        brow[n] = sb[k, tx + n * TD]
                    for m in range(R):
                        av = sa[ty + m * TD, k]
                        for n in range(R):
                            acc[m, n] += av * brow[n]
                cuda.syncthreads()  # before the next step overwrites the tiles
            for m in range(R):
                for n in range(R):
                    i = i0 + ty + m * TD
                    j = j0 + tx + n * TD
                    if i < M and j < N:
                        out[bi, i, j] = acc[m, n]

    return device.launcher(gemm, config=tile_config(tile, per_thread, max_blocks))


def tile_config(tile, per_thread, max_blocks):
    """``config(out, *args)``: (blocks, threads) of the GEMM for a tiling."""
    TD = tile // per_thread

    def config(out, *args):
        tiles = out.shape[0] * -(-out.shape[1] // tile) * -(-out.shape[2] // tile)
        return min(tiles, max_blocks), (TD, TD)

    return config


@device.cuda_factory
def _gemm_cuda():
    gpu_config = tile_config(GPU_TILE, GPU_PER_THREAD, GPU_MAX_TILE_BLOCKS)
    if device.cuda_backend() != "sim":
        return make_gemm_cuda(GPU_TILE, GPU_PER_THREAD, GPU_DEPTH, GPU_MAX_TILE_BLOCKS)
    launch = make_gemm_cuda(SIM_TILE, SIM_PER_THREAD, SIM_DEPTH, SIM_MAX_TILE_BLOCKS)
    # reports made on the simulator ask what a GPU would launch: the GPU tiling
    launch.gpu_shape = lambda *args: (*gpu_config(*args), None)
    return launch


# parallel_from=0: the CPU side always runs as it is. It is NumPy's BLAS, which
# threaded_matmul keeps single-threaded or splits itself; Kernel's thread-count switch for
# small inputs (meant for numba's parallel loops) only added ~8 us per small product.
gemm_kernel = Kernel(cpu=_gemm_cpu, cuda=_gemm_cuda, parallel_from=0)


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
    # The same sum as add_bias_at, element by element, walked as (n, c) rows of L on 1-D
    # views: the body's (i // L) % C per element kept ~100 us of integer division in a
    # (256, 32) Linear output's bias add (~8 us this way), and views let the loop vectorise.
    for n in prange(y.size // (C * L)):
        if L == 1:  # a Linear's (R, OUT) output: one row of C per sample
            row = y[n * C : (n + 1) * C]
            for c in range(C):
                row[c] += bias[c]
        else:
            for c in range(C):
                plane = y[(n * C + c) * L : (n * C + c + 1) * L]
                b = bias[c]
                for k in range(L):
                    plane[k] += b


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


@functools.cache
@device.cuda_factory
def _bias_grad_segments_kernel():
    """Stage kernel of the bias gradient (kernels/two_stage.py): ``out[c * S + s]`` = the sum
    of gy[n, c, l] over all l and the samples n of chunk s (ceil(N / S) samples each), in
    gy's dtype like the CPU kernel; the block's threads read along l (coalesced)."""
    T = block_reduce.block_threads()
    block_sum = block_reduce.block_sum_device()

    @cuda.jit
    def bias_grad_segments(out, gy, C, L, S, zero):
        buf = cuda.shared.array(T, gy.dtype)
        N = gy.size // (C * L) if C * L > 0 else 0
        NS = (N + S - 1) // S
        for p in range(cuda.blockIdx.x, out.size, cuda.gridDim.x):  # uniform per block
            c = p // S
            n0 = (p % S) * NS
            acc = zero
            for e in range(cuda.threadIdx.x, (min(N, n0 + NS) - n0) * L, T):
                acc += gy[((n0 + e // L) * C + c) * L + e % L]
            total = block_sum(buf, acc)
            if cuda.threadIdx.x == 0:
                out[p] = total

    return bias_grad_segments


@device.cuda_factory
def _bias_grad_cuda():

    def stages(gpu, gb, gy, C, L, zero):
        """S blocks per channel, each over a chunk of samples; then (S > 1) one block per
        channel adds the channel's S partials, read as a gy of one sample (N=1, C, L=S)."""
        seg = _bias_grad_segments_kernel()
        T = two_stage.threads(gpu)
        N = gy.size // (C * L) if C * L else 0
        S = max(1, min(N, two_stage.segments(C, N * L, gpu)))
        if S == 1:
            return [(seg, two_stage.blocks(C, gpu), T, gy.size, (gb, gy, C, L, 1, zero))]
        partials = device.empty((C * S,), gy.dtype, device.device_of(gb))
        return [
            (seg, two_stage.blocks(C * S, gpu), T, gy.size, (partials, gy, C, L, S, zero)),
            (seg, two_stage.blocks(C, gpu), T, C * S, (gb, partials, C, S, 1, zero)),
        ]

    return device.launcher(_bias_grad_segments_kernel(), stages=stages)


add_bias_kernel = Kernel(
    cpu=_add_bias_cpu, cuda=_add_bias_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
bias_grad_kernel = Kernel(
    cpu=_bias_grad_cpu, cuda=_bias_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


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


add_into_kernel = Kernel(
    cpu=_add_into_cpu, cuda=_add_into_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


def add_into(out, x):
    """In place: out += x (same shape, both contiguous)."""
    if out.size:
        add_into_kernel(device.flat(out), device.flat(x))
    return out
