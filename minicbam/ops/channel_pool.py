"""Fused channel pooling: mean and max over C in one pass (CBAM's spatial-attention input).

For x (N, C, H, W), per pixel (n, h, w):

    y[n, 0, h, w] = sum_c x[n, c, h, w] / C          (mean first, as in the CBAM paper)
    y[n, 1, h, w] = max_c x[n, c, h, w],   argmax[n, h, w] = the FIRST c reaching it

(a NaN wins, as in max_pool2d; the sum accumulates in float64). Gradient, a gather per input
element (no atomics):

    gx[n, c, h, w] = gy[n, 0, h, w] / C + gy[n, 1, h, w] [c == argmax[n, h, w]]

PyTorch spells this ``torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)``:
four ops whose ``amax`` backward alone dominates CBAM's time there (docs/design.md, "Fusion").
"""

import math

import numpy as np
from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- bodies
@register_jitable
def max_wins(v, best):
    """Does v replace the running maximum best? Only if larger (so the FIRST maximum is
    kept) or NaN (a NaN wins, as in max_pool2d). ``|``, not ``or``: no branch to predict."""
    return (v > best) | math.isnan(v)


@register_jitable
def channel_pool_at(y, argmax, column, n, m, M):
    """Pixel (n, m) from ``column``, a 1-D view of its C values x[n, :, m] (a slice with step
    M): mean into y[n, 0, m], max into y[n, 1, m], the max's channel into argmax[n, m].

    The CPU kernel does not call this: a gather over channels reads memory M elements apart,
    so the CPU turns the loop inside out (channels outer, pixels inner, rows of accumulators)
    and gets contiguous, vectorised reads. It makes the same max_wins comparisons in the
    same channel order and sums in float64 in the same order, so its results and argmax
    equal this body's; tests/ops/test_shared_bodies.py runs both and compares them."""
    C = column.size
    acc = 0.0
    best = y.dtype.type(-math.inf)
    best_c = 0
    for c in range(C):
        v = column[c]
        acc += v
        if max_wins(v, best):
            best, best_c = v, c
    y[2 * n * M + m] = acc / C
    y[(2 * n + 1) * M + m] = best
    argmax[n * M + m] = best_c


@register_jitable
def channel_pool_grad_at(g_mean, g_max, is_argmax, inv_c):
    """gx[n, c, m] from g_mean = gy[n, 0, m], g_max = gy[n, 1, m] and whether c is the
    argmax of pixel (n, m); inv_c = 1 / C, hoisted by the caller."""
    g = g_mean * inv_c
    if is_argmax:
        g += g_max
    return g


max_wins_cpu = njit(inline="always")(max_wins)
channel_pool_grad_at_cpu = njit(inline="always")(channel_pool_grad_at)


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True)
def _channel_pool_cpu(y, argmax, x, C, M):
    # channel_pool_at's loop turned inside out (see its docstring): one sample per task,
    # channels outer and pixels inner. 2-D views: flat ``base + m`` indices keep a
    # wraparound check per element and do not vectorise. max_wins as selects, not a branch:
    # the pixel loop then vectorises (0.30 -> 0.20 ms at (128, 32, 8, 8)).
    N = argmax.size // M
    x2, y2, a2 = x.reshape(N * C, M), y.reshape(2 * N, M), argmax.reshape(N, M)
    for n in prange(N):
        acc = np.zeros(M, dtype=np.float64)
        best = np.full(M, -np.inf, dtype=y.dtype)
        best_c = np.zeros(M, dtype=np.int64)
        for c in range(C):
            p = n * C + c
            for m in range(M):
                v, b = x2[p, m], best[m]
                acc[m] += v
                wins = max_wins_cpu(v, b)
                best[m] = v if wins else b
                best_c[m] += (c - best_c[m]) * int64(wins)
        for m in range(M):
            y2[2 * n, m] = acc[m] / C
            y2[2 * n + 1, m] = best[m]
            a2[n, m] = best_c[m]


@njit(parallel=True, cache=True)
def _channel_pool_grad_cpu(gx, gy, argmax, C, M):
    # channel_pool_grad_at per (n, c) plane on 2-D views (contiguous, vectorised writes).
    P = gx.size // M
    gx2, gy2, a2 = gx.reshape(P, M), gy.reshape(2 * (P // C), M), argmax.reshape(P // C, M)
    inv_c = gx.dtype.type(1) / gx.dtype.type(C)
    for p in prange(P):
        n, c = p // C, p % C
        for m in range(M):
            is_argmax = a2[n, m] == c
            gx2[p, m] = channel_pool_grad_at_cpu(gy2[2 * n, m], gy2[2 * n + 1, m], is_argmax, inv_c)


@device.cuda_factory
def _channel_pool_cuda():

    @cuda.jit
    def channel_pool(y, argmax, x, C, M):
        for q in range(cuda.grid(1), argmax.size, cuda.gridsize(1)):
            n, m = q // M, q % M
            lo = n * C * M + m
            channel_pool_at(y, argmax, x[lo : lo + C * M : M], n, m, M)

    def pixels(y, argmax, x, C, M):
        return argmax.size

    return device.launcher(channel_pool, items=pixels)


@device.cuda_factory
def _channel_pool_grad_cuda():

    @cuda.jit
    def channel_pool_grad(gx, gy, argmax, C, M):
        inv_c = gx.dtype.type(1) / gx.dtype.type(C)
        for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            p, m = i // M, i % M
            n, c = p // C, p % C
            q = n * M + m
            gx[i] = channel_pool_grad_at(
                gy[2 * n * M + m], gy[(2 * n + 1) * M + m], argmax[q] == c, inv_c
            )

    return device.launcher(channel_pool_grad)


# float64_math: the channel mean accumulates in float64.
channel_pool_kernel = Kernel(
    cpu=_channel_pool_cpu,
    cuda=_channel_pool_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
channel_pool_grad_kernel = Kernel(
    cpu=_channel_pool_grad_cpu,
    cuda=_channel_pool_grad_cuda,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)


# ----------------------------------------------------------------------------- op
class ChannelPool(Function):
    def forward(self, x):
        N, C, H, W = x.shape
        dev = device.device_of(x)
        self.x_shape = x.shape
        y = device.empty((N, 2, H, W), x.dtype, dev)
        self.argmax = device.empty((N, H, W), np.int64, dev)
        if y.size:
            channel_pool_kernel(device.flat(y), device.flat(self.argmax), device.flat(x), C, H * W)
        return y

    def backward(self, gy):
        _, C, H, W = self.x_shape
        gx = device.empty(self.x_shape, gy.dtype, device.device_of(gy))
        if gx.size:
            channel_pool_grad_kernel(
                device.flat(gx), device.flat(gy), device.flat(self.argmax), C, H * W
            )
        return (gx,)


def channel_pool(x):
    """[mean over C, max over C] of x (N, C, H, W) as (N, 2, H, W), in one pass."""
    if x.ndim != 4:
        raise ValueError(f"channel_pool: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"channel_pool: expected a floating-point input, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"channel_pool: expected at least one channel, got shape {x.shape}")
    return ChannelPool()(x)
