"""2-D max pooling with a saved argmax, and the pooling geometry shared by the pool ops.

For x (N, C, H, W), kernel (KH, KW), stride (SH, SW), padding (PH, PW), dilation (DH, DW):

    y[n, c, oh, ow] = max_{kh, kw} x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]

Padding is -inf (padded positions never win). ``argmax[n, c, oh, ow]`` is the flat index
``ih * W + iw`` of the FIRST maximum in the window's scan order (kh, then kw); a NaN wins
(the last NaN), as in PyTorch's kernel; a window lying entirely in the padding (possible
with dilation) gives -inf and argmax -1. Output size (PyTorch's ``pooling_output_shape``):

    OH = floor_or_ceil((H + 2 PH - DH (KH - 1) - 1) / SH) + 1,
    and with ceil_mode, OH -= 1 when the last window would start inside the right padding.

Gradient: each output gradient goes to its window's argmax,

    gx[n, c, ih, iw] = sum_{(oh, ow) whose window holds (ih, iw)} gy[n, c, oh, ow] [argmax == ih W + iw]

computed as a gather per INPUT element over the (at most KH * KW) windows that contain it:
race-free, deterministic and identical on both devices (no atomics).
"""

import math

import numpy as np
from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.tensor import Tensor

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- geometry
def pair(value, name, op):
    """(a, b) from an int or a pair of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value}")
    return value


def pool_output_size(size, k, s, p, d, ceil_mode):
    """PyTorch's ``pooling_output_shape`` for one spatial dimension."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def check_rank4(op, x):
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected a floating-point input, got dtype {x.dtype}")


def pool_geometry(op, shape, kernel_size, stride, padding, dilation, ceil_mode):
    """(H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW) as Python ints, validated."""
    _, C, H, W = shape
    KH, KW = pair(kernel_size, "kernel_size", op)
    SH, SW = (KH, KW) if stride is None or stride == () else pair(stride, "stride", op)
    PH, PW = pair(padding, "padding", op)
    DH, DW = pair(dilation, "dilation", op)
    if KH <= 0 or KW <= 0:
        raise ValueError(f"{op}: kernel_size must be positive, got ({KH}, {KW})")
    if SH <= 0 or SW <= 0:
        raise ValueError(f"{op}: stride must be positive, got ({SH}, {SW})")
    if DH <= 0 or DW <= 0:
        raise ValueError(f"{op}: dilation must be positive, got ({DH}, {DW})")
    if PH < 0 or PW < 0 or PH > KH // 2 or PW > KW // 2:
        raise ValueError(
            f"{op}: pad should be at most half of kernel size, but got padding ({PH}, {PW}) "
            f"for kernel_size ({KH}, {KW})"
        )
    OH = pool_output_size(H, KH, SH, PH, DH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, DW, ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{op}: kernel ({KH}, {KW}) with dilation ({DH}, {DW}) is larger than the padded "
            f"input: given input size ({C}, {H}, {W}), calculated output size ({C}, {OH}, {OW})"
        )
    return H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW


def batched(fn, x, *args):
    """Run a 4-D pool on a 3-D (C, H, W) input as a batch of one, as PyTorch allows."""
    if x.ndim != 3:
        return fn(x, *args)
    y = fn(x.reshape((1,) + x.shape), *args)
    if isinstance(y, tuple):
        return tuple(t.reshape(t.shape[1:]) for t in y)
    return y.reshape(y.shape[1:])


# ----------------------------------------------------------------------------- bodies
@register_jitable
def max_window(y, argmax, x, i, p, oh, ow, g):
    """y[i], argmax[i] for the window at (oh, ow) of plane p; g is the geometry tuple."""
    H, W, _, _, KH, KW, SH, SW, PH, PW, DH, DW = g
    base = p * H * W
    best = y.dtype.type(-math.inf)
    best_k = -1
    for kh in range(KH):
        ih = oh * SH - PH + kh * DH
        if ih < 0 or ih >= H:
            continue
        for kw in range(KW):
            iw = ow * SW - PW + kw * DW
            if iw < 0 or iw >= W:
                continue
            v = x[base + ih * W + iw]
            if best_k < 0 or v > best or math.isnan(v):
                best, best_k = v, ih * W + iw
    y[i] = best
    argmax[i] = best_k


@register_jitable
def window_of(t, s, n_out):
    """o with o s == t and 0 <= o < n_out, else -1. Strides 1 and 2 skip the integer
    division (a per-element ``//`` by a run-time value costs more than the rest)."""
    if t < 0:
        return -1
    if s == 1:
        o = t
    elif s == 2:
        if t & 1:
            return -1
        o = t >> 1
    else:
        if t % s != 0:
            return -1
        o = t // s
    return o if o < n_out else -1


@register_jitable
def max_pool_grad_at(gx, gy, argmax, p, ih, iw, g):
    """gx[p, ih, iw]: a gather over the windows holding (ih, iw) whose argmax it is."""
    H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW = g
    k = ih * W + iw
    acc = gx.dtype.type(0)
    for kh in range(KH):
        oh = window_of(ih + PH - kh * DH, SH, OH)
        if oh < 0:
            continue
        for kw in range(KW):
            ow = window_of(iw + PW - kw * DW, SW, OW)
            if ow >= 0:
                o = (p * OH + oh) * OW + ow
                if argmax[o] == k:
                    acc += gy[o]
    gx[p * H * W + k] = acc


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves (array arguments on every element). CUDA kernels call the
# register_jitable originals.
max_pool_grad_at_cpu = njit(inline="always")(max_pool_grad_at)


# ----------------------------------------------------------------------------- kernels
@njit(inline="always")
def _greater_wins(best, best_k, v, k):
    """(v, k) if v > best else (best, best_k), the index by arithmetic: a select, no branch."""
    greater = v > best
    return (v if greater else best), best_k + (k - best_k) * int64(greater)


@njit(parallel=True, cache=True)
def _max_pool_cpu(y, argmax, x, g):
    # max_window on 3-D (plane, row, column) views: flat ``base + ih * W + iw`` indices keep a
    # wraparound check per element. When every window lies inside the input (no padding, no
    # ceil-mode overhang) the bounds checks go too. Same scan order and comparisons.
    H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW = g
    P = x.size // (H * W)
    x3, y3, a3 = x.reshape(P, H, W), y.reshape(P, OH, OW), argmax.reshape(P, OH, OW)
    inside = (
        PH == 0
        and PW == 0
        and (OH - 1) * SH + (KH - 1) * DH < H
        and (OW - 1) * SW + (KW - 1) * DW < W
    )
    if inside and KH == 2 and KW == 2 and DH == 1 and DW == 1:
        # The common 2x2 window, unrolled, without branches: on random data the scan's
        # comparisons are unpredictable, and a mispredicted branch per window cost ~2.5x the
        # whole pass (1.2 vs 0.43 ms for (128, 32, 8, 8)). _greater_wins keeps the first
        # maximum as the scan does; a window with a NaN (rare) takes the scan's own rule.
        # (The NaN test inside the select, ``(v > best) | isnan(v)``, compiled back into
        # branches: 1.35 ms again. The channel pool's pixel loop vectorises with it.)
        for r in prange(P * OH):
            p, oh = r // OH, r % OH
            ih = oh * SH
            for ow in range(OW):
                iw = ow * SW
                k = ih * W + iw
                v0, v1 = x3[p, ih, iw], x3[p, ih, iw + 1]
                v2, v3 = x3[p, ih + 1, iw], x3[p, ih + 1, iw + 1]
                best, best_k = _greater_wins(v0, k, v1, k + 1)
                best, best_k = _greater_wins(best, best_k, v2, k + W)
                best, best_k = _greater_wins(best, best_k, v3, k + W + 1)
                if (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3):
                    best, best_k = v0, k
                    if v1 > best or math.isnan(v1):
                        best, best_k = v1, k + 1
                    if v2 > best or math.isnan(v2):
                        best, best_k = v2, k + W
                    if v3 > best or math.isnan(v3):
                        best, best_k = v3, k + W + 1
                y3[p, oh, ow] = best
                a3[p, oh, ow] = best_k
        return
    for r in prange(P * OH):  # one output row (p, oh) per iteration
        p, oh = r // OH, r % OH
        for ow in range(OW):
            best = y.dtype.type(-math.inf)
            best_k = -1
            for kh in range(KH):
                ih = oh * SH - PH + kh * DH
                if not inside and (ih < 0 or ih >= H):
                    continue
                for kw in range(KW):
                    iw = ow * SW - PW + kw * DW
                    if not inside and (iw < 0 or iw >= W):
                        continue
                    v = x3[p, ih, iw]
                    if best_k < 0 or v > best or math.isnan(v):
                        best, best_k = v, ih * W + iw
            y3[p, oh, ow] = best
            a3[p, oh, ow] = best_k


@njit(parallel=True, cache=True)
def _max_pool_grad_cpu(gx, gy, argmax, g):
    H, W, OH, OW, KH, KW, SH, SW, _, _, DH, DW = g
    P = gx.size // (H * W)
    if (KH - 1) * DH < SH and (KW - 1) * DW < SW:
        # Windows do not overlap: each input element is in at most one window, so
        # max_pool_grad_at's gather has at most one term and a scatter per plane gives the
        # same values (0 + gy, as the gather adds to 0) without the per-element search.
        gx2, gy2, a2 = gx.reshape(P, H * W), gy.reshape(P, OH * OW), argmax.reshape(P, OH * OW)
        zero = gx.dtype.type(0)
        for p in prange(P):
            for k in range(H * W):
                gx2[p, k] = zero
            for o in range(OH * OW):
                k = a2[p, o]
                if k >= 0:
                    gx2[p, k] = zero + gy2[p, o]
        return
    for r in prange(gx.size // W):  # one input row (p, ih) per iteration
        r = int64(r)
        for iw in range(W):
            max_pool_grad_at_cpu(gx, gy, argmax, r // H, r % H, iw, g)


@device.cuda_factory
def _max_pool_cuda():

    @cuda.jit
    def max_pool(y, argmax, x, g):
        OH, OW = g[2], g[3]
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            r = i // OW
            max_window(y, argmax, x, i, r // OH, r % OH, i % OW, g)

    return device.launcher(max_pool)


@device.cuda_factory
def _max_pool_grad_cuda():

    @cuda.jit
    def max_pool_grad(gx, gy, argmax, g):
        H, W = g[0], g[1]
        for j in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            r = j // W
            max_pool_grad_at(gx, gy, argmax, r // H, r % H, j % W, g)

    return device.launcher(max_pool_grad)


# a few comparisons per element: threads pay only on large inputs (device.Kernel)
max_pool_kernel = Kernel(
    cpu=_max_pool_cpu, cuda=_max_pool_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
max_pool_grad_kernel = Kernel(
    cpu=_max_pool_grad_cpu, cuda=_max_pool_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


# ----------------------------------------------------------------------------- op
class MaxPool2d(Function):
    def __init__(self, geometry):
        self.g = geometry

    def forward(self, x):
        N, C = x.shape[:2]
        OH, OW = self.g[2], self.g[3]
        dev = device.device_of(x)
        self.x_shape = x.shape
        y = device.empty((N, C, OH, OW), x.dtype, dev)
        self.argmax = device.empty((N, C, OH, OW), np.int64, dev)
        if y.size:
            max_pool_kernel(device.flat(y), device.flat(self.argmax), device.flat(x), self.g)
        return y

    def backward(self, gy):
        gx = device.empty(self.x_shape, gy.dtype, device.device_of(gy))
        if gx.size:
            max_pool_grad_kernel(device.flat(gx), device.flat(gy), device.flat(self.argmax), self.g)
        return (gx,)


def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    check_rank4("max_pool2d", x)
    g = pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    fn = MaxPool2d(g)
    y = fn(x)
    if return_indices:
        return y, Tensor(fn.argmax)
    return y


def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """``torch.nn.functional.max_pool2d``; with ``return_indices`` also the int64 argmax
    (flat index within each H*W plane)."""
    return batched(
        _max_pool2d, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
    )
