"""Fused global average and max pooling over H*W, one pass per (n, c) plane.

For x (N, C, H, W), M = H W and ``pool_types`` a sequence of "avg" / "max" (P of them):

    y[k, n, c] = sum_{h, w} x[n, c, h, w] / M      where pool_types[k] == "avg"
    y[k, n, c] = max_{h, w} x[n, c, h, w]          where pool_types[k] == "max"

The max keeps its argmax (flat h W + w of the FIRST maximum; a NaN wins, as in max_pool2d).
This is the channel-attention squeeze of CBAM: both pools read x once, and the (P, N, C)
output feeds one shared MLP. Sums accumulate in float64. The CPU pools one plane per task;
CUDA one plane per block, its threads striding over the plane (coalesced reads), the
partial sums and maxima combined by the block's fixed tree (kernels/block_reduce.py).

Gradient (a gather per input element):

    gx[n, c, h, w] = gy[avg, n, c] / M + gy[max, n, c] [h W + w == argmax[n, c]]
"""

import math

import numpy as np
from numba import float64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.kernels import block_reduce

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

POOL_TYPES = ("avg", "max")


# ----------------------------------------------------------------------------- bodies
@register_jitable
def global_plane(y, argmax, plane, p, NC, avg_slot, max_slot):
    """Pool plane p (a 1-D view of its M elements, of NC planes) into y[slot * NC + p];
    argmax[p] for the max. A 1-D view indexed from 0 lets the CPU loop vectorise."""
    acc = 0.0
    best = y.dtype.type(-math.inf)
    best_k = 0
    for k in range(plane.size):
        v = plane[k]
        acc += v
        if v > best or math.isnan(v):
            best, best_k = v, k
    if avg_slot >= 0:
        y[avg_slot * NC + p] = acc / plane.size
    if max_slot >= 0:
        y[max_slot * NC + p] = best
        argmax[p] = best_k


@register_jitable
def global_grad_at(gx, gy, argmax, p, k, M, NC, avg_slot, max_slot):
    """gx[p, k] for element k of plane p (of NC)."""
    g = gx.dtype.type(0)
    if avg_slot >= 0:
        g += gy[avg_slot * NC + p] * (gx.dtype.type(1) / gx.dtype.type(M))  # hoisted 1 / M
    if max_slot >= 0 and argmax[p] == k:
        g += gy[max_slot * NC + p]
    gx[p * M + k] = g


# The CPU launcher inlines its copy of the body (a plain call per plane costs more).
global_plane_cpu = njit(inline="always")(global_plane)


# The CPU forward splits global_plane's loop in two vectorised passes per plane: the
# float64 sum with reassociation allowed (an accumulator chain does not vectorise), then,
# when that sum is not NaN (so the plane holds no NaN), the maximum under the no-NaN
# assumption and its first index (plane[k] == max: global_plane's first maximum). A plane
# whose sum is NaN (a NaN, or inf - inf) runs global_plane's scan itself, so NaN handling
# (the last NaN wins) is the body's. Together ~5x faster on 64-element planes. The two
# helpers are not cached themselves: they compile into each cached caller
# (minicbam/precompile.py says why).
@njit(fastmath={"reassoc"})
def plane_sum(plane):
    """sum of a 1-D plane in float64, in any order (reassociated)."""
    acc = 0.0
    for k in range(plane.size):
        acc += plane[k]
    return acc


@njit(fastmath={"nnan"})
def finite_plane_argmax(plane):
    """Index of the first maximum of a 1-D plane that holds no NaN."""
    best = plane[0]
    for k in range(1, plane.size):
        best = max(best, plane[k])
    k = 0
    while k < plane.size - 1 and plane[k] != best:  # bounded: a NaN would never match
        k += 1
    return k


# ----------------------------------------------------------------------------- kernels
# The CPU gradient loop is global_grad_at on a 2-D (plane, element) view: flat
# ``p * M + k`` indices keep a wraparound check per element and do not vectorise.
@njit(parallel=True, cache=True)
def _global_pool_cpu(y, argmax, x, M, avg_slot, max_slot):
    NC = x.size // M
    x2 = x.reshape(NC, M)
    for p in prange(NC):
        plane = x2[p]
        acc = plane_sum(plane)
        if avg_slot >= 0:
            y[avg_slot * NC + p] = acc / M
        if max_slot < 0:
            continue
        if math.isnan(acc):
            global_plane_cpu(y, argmax, plane, p, NC, -1, max_slot)
        else:
            k = finite_plane_argmax(plane)
            y[max_slot * NC + p] = plane[k]
            argmax[p] = k


@njit(parallel=True, cache=True)
def _global_grad_cpu(gx, gy, argmax, M, avg_slot, max_slot):
    NC = gx.size // M
    gx2 = gx.reshape(NC, M)
    inv_m = gx.dtype.type(1) / gx.dtype.type(M)
    for p in prange(NC):
        g = gx.dtype.type(0)
        if avg_slot >= 0:
            g += gy[avg_slot * NC + p] * inv_m
        for k in range(M):
            gx2[p, k] = g
        if max_slot >= 0:
            k = argmax[p]
            gx2[p, k] = g + gy[max_slot * NC + p]


@device.cuda_factory
def _global_pool_cuda():
    block_sum = block_reduce.block_sum_device()
    block_argmax = block_reduce.block_argmax_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def global_pool(y, argmax, x, M, avg_slot, max_slot):
        # One block per plane, its threads striding over the plane. Each thread keeps
        # global_plane's running max over its elements (the first maximum; a later NaN
        # replaces an earlier one, so the LAST NaN); block_argmax then keeps the smaller
        # index of a tie and the first NaN, so a NaN's index goes in mirrored (M - 1 - k):
        # the first mirrored index is the last NaN, as on the CPU.
        buf = cuda.shared.array(T, np.float64)
        vals = cuda.shared.array(T, np.float64)  # float32 -> float64 is exact
        idxs = cuda.shared.array(T, np.int64)
        NC = x.size // M
        t, step = cuda.threadIdx.x, cuda.blockDim.x
        for p in range(cuda.blockIdx.x, NC, cuda.gridDim.x):
            lo = p * M
            acc, best, best_k = 0.0, 0.0, -1
            for k in range(t, M, step):
                v = float64(x[lo + k])
                acc += v
                if best_k < 0 or v > best or math.isnan(v):
                    best, best_k = v, k
            if math.isnan(best):
                best_k = M - 1 - best_k
            total = block_sum(buf, acc)
            best, best_k = block_argmax(vals, idxs, best, best_k)
            if t == 0:
                if avg_slot >= 0:
                    y[avg_slot * NC + p] = total / M
                if max_slot >= 0:
                    y[max_slot * NC + p] = best
                    argmax[p] = M - 1 - best_k if math.isnan(best) else best_k

    def planes(y, argmax, x, M, *rest):
        return x.size // M

    return block_reduce.plane_launcher(
        global_pool, planes=planes, items=lambda y, argmax, x, *rest: x.size
    )


@device.cuda_factory
def _global_grad_cuda():

    @cuda.jit
    def global_grad(gx, gy, argmax, M, avg_slot, max_slot):
        NC = gx.size // M
        for j in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            global_grad_at(gx, gy, argmax, j // M, j % M, M, NC, avg_slot, max_slot)

    return device.launcher(global_grad)


# float64_math: the plane mean accumulates in float64.
global_pool_kernel = Kernel(
    cpu=_global_pool_cpu,
    cuda=_global_pool_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
global_grad_kernel = Kernel(
    cpu=_global_grad_cpu, cuda=_global_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


# ----------------------------------------------------------------------------- op
class GlobalPool(Function):
    def __init__(self, pool_types):
        self.avg_slot = pool_types.index("avg") if "avg" in pool_types else -1
        self.max_slot = pool_types.index("max") if "max" in pool_types else -1
        self.P = len(pool_types)

    def forward(self, x):
        N, C, H, W = x.shape
        dev = device.device_of(x)
        self.x_shape, self.M = x.shape, H * W
        y = device.empty((self.P, N, C), x.dtype, dev)
        # avg alone never touches argmax; a one-element buffer keeps one kernel signature
        self.argmax = device.empty((N, C) if self.max_slot >= 0 else (1,), np.int64, dev)
        if y.size:
            global_pool_kernel(
                device.flat(y),
                device.flat(self.argmax),
                device.flat(x),
                self.M,
                self.avg_slot,
                self.max_slot,
            )
        return y

    def backward(self, gy):
        gx = device.empty(self.x_shape, gy.dtype, device.device_of(gy))
        if gx.size:
            global_grad_kernel(
                device.flat(gx),
                device.flat(gy),
                device.flat(self.argmax),
                self.M,
                self.avg_slot,
                self.max_slot,
            )
        return (gx,)


def check_pool_types(pool_types):
    pool_types = (pool_types,) if isinstance(pool_types, str) else tuple(pool_types)
    if (
        not pool_types
        or len(set(pool_types)) != len(pool_types)
        or any(t not in POOL_TYPES for t in pool_types)
    ):
        raise ValueError(
            f"global_pool: pool_types must be distinct entries of {POOL_TYPES}, got {pool_types}"
        )
    return pool_types


def global_pool_with_indices(x, pool_types=POOL_TYPES):
    """(y (P, N, C) tensor, argmax (N, C) int64 array or None when "max" is not pooled)."""
    pool_types = check_pool_types(pool_types)
    if x.ndim != 4:
        raise ValueError(f"global_pool: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"global_pool: expected a floating-point input, got dtype {x.dtype}")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"global_pool: expected non-empty H and W, got shape {x.shape}")
    fn = GlobalPool(pool_types)
    y = fn(x)
    return y, (fn.argmax if fn.max_slot >= 0 else None)


def global_pool(x, pool_types=POOL_TYPES):
    """Global pools of x (N, C, H, W) stacked as (len(pool_types), N, C), one pass over x."""
    return global_pool_with_indices(x, pool_types)[0]
