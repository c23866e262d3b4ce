"""Adaptive 2-D average and max pooling: the output size is given, the windows follow.

For x (N, C, H, W) and output (OH, OW), window oh spans rows [h0, h1) with (PyTorch's rule)

    h0 = floor(oh H / OH),   h1 = ceil((oh + 1) H / OH)        (likewise columns)

    avg:  y[n, c, oh, ow] = sum_{window} x / ((h1 - h0)(w1 - w0))
          gx[n, c, ih, iw] = sum_{windows holding (ih, iw)} gy / ((h1 - h0)(w1 - w0))
    max:  y = max over the window, argmax = flat index ih W + iw of its FIRST maximum
          gx[n, c, ih, iw] = sum_{windows holding (ih, iw)} gy [argmax == ih W + iw]

The windows holding row ih are oh in [floor(ih OH / H), ceil((ih + 1) OH / H)), so the
gradients are gathers per input element (no atomics); the CPU kernels instead add each
window's share into its plane, in the same order. CUDA has one forward and one backward
kernel for both kinds (``is_max``); the CPU has one per kind, so that a run using only one
compiles only its loops. Output (1, 1) is global pooling and goes through the one-pass
``global_pool`` kernels.
"""

import functools
import math

import numpy as np
from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.ops.global_pool import global_pool_with_indices
from minicbam.ops.max_pool2d import batched, check_rank4
from minicbam.tensor import Tensor

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- bodies
@register_jitable
def start_index(i, size, out_size):
    return (i * size) // out_size


@register_jitable
def end_index(i, size, out_size):
    return ((i + 1) * size + out_size - 1) // out_size


@register_jitable
def adaptive_window(y, argmax, x, i, p, oh, ow, g, is_max):
    """y[i] (and argmax[i] when is_max) for window (oh, ow) of plane p; g = (H, W, OH, OW)."""
    H, W, OH, OW = g
    h0, h1 = start_index(oh, H, OH), end_index(oh, H, OH)
    w0, w1 = start_index(ow, W, OW), end_index(ow, W, OW)
    window_reduce(y, argmax, x, i, p * H * W, h0, h1, w0, w1, W, is_max)


@register_jitable
def window_reduce(y, argmax, x, i, base, h0, h1, w0, w1, W, is_max):
    """y[i] (and argmax[i]) over rows [h0, h1) and columns [w0, w1) of the plane at
    x[base:], whose rows are W long (the CPU kernel passes bounds it computed once)."""
    acc = y.dtype.type(0)
    best = y.dtype.type(-math.inf)
    best_k = h0 * W + w0
    for ih in range(h0, h1):
        for iw in range(w0, w1):
            v = x[base + ih * W + iw]
            if is_max:
                if v > best or math.isnan(v):
                    best, best_k = v, ih * W + iw
            else:
                acc += v
    if is_max:
        y[i] = best
        argmax[i] = best_k
    else:
        y[i] = acc / y.dtype.type((h1 - h0) * (w1 - w0))


@register_jitable
def adaptive_grad_at(gx, gy, argmax, p, ih, iw, g, is_max):
    """gx[p, ih, iw]: a gather over the windows holding (ih, iw)."""
    H, W, OH, OW = g
    k = ih * W + iw
    acc = gx.dtype.type(0)
    for oh in range(start_index(ih, OH, H), end_index(ih, OH, H)):
        for ow in range(start_index(iw, OW, W), end_index(iw, OW, W)):
            o = (p * OH + oh) * OW + ow
            if is_max:
                if argmax[o] == k:
                    acc += gy[o]
            else:
                area = (end_index(oh, H, OH) - start_index(oh, H, OH)) * (
                    end_index(ow, W, OW) - start_index(ow, W, OW)
                )
                acc += gy[o] / gx.dtype.type(area)
    gx[p * H * W + k] = acc


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves (array arguments on every element). CUDA kernels call the
# register_jitable originals.
window_reduce_cpu = njit(inline="always")(window_reduce)


# Not cached itself: a callee compiles into each cached caller (minicbam/precompile.py).
@njit
def window_bounds(size, out_size):
    """(out_size, 2) int64: [start, end) of every window along one axis. The CPU kernels
    compute them once per call: the integer divisions per window (64-bit divisions cost
    tens of cycles each) made the pooling of (128, 64, 4, 4) to 2x2 take ~1 ms."""
    b = np.empty((out_size, 2), np.int64)
    for o in range(out_size):
        b[o, 0] = start_index(o, size, out_size)
        b[o, 1] = end_index(o, size, out_size)
    return b


# ----------------------------------------------------------------------------- kernels
# Planes per task of the CPU average pool and its gradient: the loops run across a block
# of planes, one window element at a time (an output's few elements make inner loops too
# short to pay; along planes they are long and free of dependencies, ~2x faster).
PLANE_BLOCK = 128


# Average and maximum are separate CPU kernels (CUDA's kernel takes is_max): a run that
# only averages (the digits CNN's head) compiles the average's loops only; one kernel with
# both compiled about twice as long. Both keep the CUDA kernel's arguments (is_max unused),
# so that one argument list serves both devices.
@njit(parallel=True, cache=True)
def _adaptive_max_cpu(y, argmax, x, g, is_max):
    H, W, OH, OW = g
    P = y.size // (OH * OW)
    hb, wb = window_bounds(H, OH), window_bounds(W, OW)
    for p in prange(P):  # one plane per iteration
        p = int64(p)  # prange indices can be unsigned; keep the index maths signed
        for oh in range(OH):
            for ow in range(OW):
                i = (p * OH + oh) * OW + ow
                h0, h1, w0, w1 = hb[oh, 0], hb[oh, 1], wb[ow, 0], wb[ow, 1]
                window_reduce_cpu(y, argmax, x, i, p * H * W, h0, h1, w0, w1, W, True)


@njit(parallel=True, cache=True)
def _adaptive_avg_cpu(y, argmax, x, g, is_max):
    H, W, OH, OW = g
    P = y.size // (OH * OW)
    hb, wb = window_bounds(H, OH), window_bounds(W, OW)
    # window_reduce's sums (rows, then columns, from 0) for a block of planes
    x2, y2 = x.reshape(P, H * W), y.reshape(P, OH * OW)
    for b in prange((P + PLANE_BLOCK - 1) // PLANE_BLOCK):
        p0 = int64(b) * PLANE_BLOCK
        p1 = min(P, p0 + PLANE_BLOCK)
        acc = np.empty(p1 - p0, y.dtype)
        for oh in range(OH):
            for ow in range(OW):
                acc[:] = 0
                for ih in range(hb[oh, 0], hb[oh, 1]):
                    for iw in range(wb[ow, 0], wb[ow, 1]):
                        col = x2[p0:p1, ih * W + iw]
                        for q in range(acc.size):
                            acc[q] += col[q]
                area = y.dtype.type((hb[oh, 1] - hb[oh, 0]) * (wb[ow, 1] - wb[ow, 0]))
                out = y2[p0:p1, oh * OW + ow]
                for q in range(acc.size):
                    out[q] = acc[q] / area


# The CPU gradient scatters each window's share into its zeroed plane: the same sums in
# the same (oh, ow) order as adaptive_grad_at's gather, without the gather's integer
# divisions per input element (they made it ~10x slower); the window bounds come from
# window_bounds, once per call. The average's shares go to a block of planes at a time.
@njit(parallel=True, cache=True)
def _adaptive_max_grad_cpu(gx, gy, argmax, g, is_max):
    H, W, OH, OW = g
    P = gx.size // (H * W)
    gx2, gy2 = gx.reshape(P, H * W), gy.reshape(P, OH * OW)
    for p in prange(P):
        plane = gx2[p]
        plane[:] = 0
        for o in range(OH * OW):
            plane[argmax[p * OH * OW + o]] += gy2[p, o]


@njit(parallel=True, cache=True)
def _adaptive_avg_grad_cpu(gx, gy, argmax, g, is_max):
    H, W, OH, OW = g
    P = gx.size // (H * W)
    gx2, gy2 = gx.reshape(P, H * W), gy.reshape(P, OH * OW)
    hb, wb = window_bounds(H, OH), window_bounds(W, OW)
    for b in prange((P + PLANE_BLOCK - 1) // PLANE_BLOCK):
        p0 = int64(b) * PLANE_BLOCK
        p1 = min(P, p0 + PLANE_BLOCK)
        gx2[p0:p1] = 0
        v = np.empty(p1 - p0, gx.dtype)
        for oh in range(OH):
            h0, h1 = hb[oh, 0], hb[oh, 1]
            for ow in range(OW):
                w0, w1 = wb[ow, 0], wb[ow, 1]
                g_o = gy2[p0:p1, oh * OW + ow]
                area = gx.dtype.type((h1 - h0) * (w1 - w0))
                for q in range(v.size):
                    v[q] = g_o[q] / area
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        col = gx2[p0:p1, ih * W + iw]
                        for q in range(v.size):
                            col[q] += v[q]


@functools.cache  # one CUDA kernel for both Kernels (avg and max) that use it
@device.cuda_factory
def _adaptive_cuda():

    @cuda.jit
    def adaptive(y, argmax, x, g, is_max):
        OH, OW = g[2], g[3]
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            r = i // OW
            adaptive_window(y, argmax, x, i, r // OH, r % OH, i % OW, g, is_max)

    return device.launcher(adaptive)


@functools.cache  # one CUDA kernel for both Kernels (avg and max) that use it
@device.cuda_factory
def _adaptive_grad_cuda():

    @cuda.jit
    def adaptive_grad(gx, gy, argmax, g, is_max):
        H, W = g[0], g[1]
        for j in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            r = j // W
            adaptive_grad_at(gx, gy, argmax, r // H, r % H, j % W, g, is_max)

    return device.launcher(adaptive_grad)


LARGE = device.LARGE_INPUT_ELEMENTS
# (forward, backward) Kernel pairs by is_max; each pair's CUDA side is the shared kernel
KERNELS = {
    False: (
        Kernel(cpu=_adaptive_avg_cpu, cuda=_adaptive_cuda, parallel_from=LARGE),
        Kernel(cpu=_adaptive_avg_grad_cpu, cuda=_adaptive_grad_cuda, parallel_from=LARGE),
    ),
    True: (
        Kernel(cpu=_adaptive_max_cpu, cuda=_adaptive_cuda, parallel_from=LARGE),
        Kernel(cpu=_adaptive_max_grad_cpu, cuda=_adaptive_grad_cuda, parallel_from=LARGE),
    ),
}


# ----------------------------------------------------------------------------- op
class AdaptivePool2d(Function):
    def __init__(self, output_size, is_max):
        self.output_size, self.is_max = output_size, is_max

    def forward(self, x):
        N, C, H, W = x.shape
        OH, OW = self.output_size
        dev = device.device_of(x)
        self.x_shape, self.g = x.shape, (H, W, OH, OW)
        y = device.empty((N, C, OH, OW), x.dtype, dev)
        # avg pooling never reads argmax; a one-element buffer keeps one kernel signature
        self.argmax = device.empty((N, C, OH, OW) if self.is_max else (1,), np.int64, dev)
        if y.size:
            KERNELS[self.is_max][0](
                device.flat(y), device.flat(self.argmax), device.flat(x), self.g, self.is_max
            )
        return y

    def backward(self, gy):
        gx = device.empty(self.x_shape, gy.dtype, device.device_of(gy))
        if gx.size:
            KERNELS[self.is_max][1](
                device.flat(gx), device.flat(gy), device.flat(self.argmax), self.g, self.is_max
            )
        return (gx,)


def output_pair(op, output_size, x_shape):
    """(OH, OW) from an int or a pair whose entries may be None (keep the input's size)."""
    if isinstance(output_size, (int, np.integer)):
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if len(output_size) != 2:
        raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size}")
    OH, OW = (x_shape[2 + k] if s is None else int(s) for k, s in enumerate(output_size))
    if OH <= 0 or OW <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {output_size}")
    if 0 in x_shape[1:]:
        raise ValueError(f"{op}: expected non-empty C, H, W dimensions, got shape {x_shape}")
    return OH, OW


def _adaptive_pool2d(x, output_size, is_max, return_indices):
    op = "adaptive_max_pool2d" if is_max else "adaptive_avg_pool2d"
    check_rank4(op, x)
    N, C = x.shape[:2]
    out = output_pair(op, output_size, x.shape)
    if out == (1, 1):  # global pooling: one pass per plane
        y, argmax = global_pool_with_indices(x, ("max",) if is_max else ("avg",))
        y = y.reshape(N, C, 1, 1)
        indices = argmax.reshape((N, C, 1, 1)) if is_max else None
    else:
        fn = AdaptivePool2d(out, is_max)
        y, indices = fn(x), fn.argmax
    return (y, Tensor(indices)) if return_indices else y


def adaptive_avg_pool2d(input, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d``."""
    return batched(_adaptive_pool2d, input, output_size, False, False)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """``torch.nn.functional.adaptive_max_pool2d``."""
    return batched(_adaptive_pool2d, input, output_size, True, return_indices)
