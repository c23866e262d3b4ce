"""2-D average pooling.

For x (N, C, H, W), kernel (KH, KW), stride (SH, SW), padding (PH, PW), window (oh, ow):

    h0 = oh SH - PH,  h1 = min(h0 + KH, H + PH)   (likewise w0, w1)
    y[n, c, oh, ow] = sum_{ih in [h0, h1) & [0, H), iw in [w0, w1) & [0, W)} x[n, c, ih, iw] / D

with divisor D = divisor_override if given, else (h1 - h0)(w1 - w0) with count_include_pad
(padding counts as zeros, but a ceil_mode window is cut at the padded edge), else the number
of in-bounds elements (PyTorch's rules). Output size as for max_pool2d (no dilation).

Gradient (a gather per INPUT element over the windows that contain it):

    gx[n, c, ih, iw] = sum_{(oh, ow): window holds (ih, iw)} gy[n, c, oh, ow] / D(oh, ow)
"""

import math

from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.ops.max_pool2d import batched, check_rank4, pool_geometry, window_of

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- bodies
@register_jitable
def avg_divisor(oh, ow, g):
    """D(oh, ow); g = (H, W, OH, OW, KH, KW, SH, SW, PH, PW, include_pad, override)."""
    H, W, _, _, KH, KW, SH, SW, PH, PW, include_pad, override = g
    if override > 0:
        return override
    h0, w0 = oh * SH - PH, ow * SW - PW
    h1, w1 = min(h0 + KH, H + PH), min(w0 + KW, W + PW)
    if include_pad:
        return (h1 - h0) * (w1 - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


@register_jitable
def avg_window(y, x, i, p, oh, ow, g):
    H, W, _, _, KH, KW, SH, SW, PH, PW, _, _ = g
    h0, w0 = oh * SH - PH, ow * SW - PW
    acc = y.dtype.type(0)
    for ih in range(max(h0, 0), min(h0 + KH, H)):
        for iw in range(max(w0, 0), min(w0 + KW, W)):
            acc += x[(p * H + ih) * W + iw]
    d = avg_divisor(oh, ow, g)
    y[i] = acc / y.dtype.type(d) if d > 0 else y.dtype.type(math.nan)


@register_jitable
def avg_pool_grad_at(gx, gy, p, ih, iw, g):
    """gx[p, ih, iw]: a gather over the windows holding (ih, iw)."""
    H, W, OH, OW, KH, KW, SH, SW, PH, PW, _, _ = g
    acc = gx.dtype.type(0)
    for kh in range(KH):
        oh = window_of(ih + PH - kh, SH, OH)
        if oh < 0:
            continue
        for kw in range(KW):
            ow = window_of(iw + PW - kw, SW, OW)
            if ow >= 0:
                d = gx.dtype.type(avg_divisor(oh, ow, g))
                acc += gy[(p * OH + oh) * OW + ow] / d
    gx[(p * H + ih) * W + iw] = acc


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves (array arguments on every element). CUDA kernels call the
# register_jitable originals.
avg_window_cpu = njit(inline="always")(avg_window)
avg_pool_grad_at_cpu = njit(inline="always")(avg_pool_grad_at)


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True)
def _avg_pool_cpu(y, x, g):
    OH, OW = g[2], g[3]
    for r in prange(y.size // OW):  # one output row (p, oh) per iteration
        r = int64(r)  # prange indices can be unsigned; unsigned // signed gives a float
        for ow in range(OW):
            avg_window_cpu(y, x, r * OW + ow, r // OH, r % OH, ow, g)


@njit(parallel=True, cache=True)
def _avg_pool_grad_cpu(gx, gy, g):
    H, W = g[0], g[1]
    for r in prange(gx.size // W):  # one input row (p, ih) per iteration
        r = int64(r)
        for iw in range(W):
            avg_pool_grad_at_cpu(gx, gy, r // H, r % H, iw, g)


@device.cuda_factory
def _avg_pool_cuda():

    @cuda.jit
    def avg_pool(y, x, g):
        OH, OW = g[2], g[3]
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            r = i // OW
            avg_window(y, x, i, r // OH, r % OH, i % OW, g)

    return device.launcher(avg_pool)


@device.cuda_factory
def _avg_pool_grad_cuda():

    @cuda.jit
    def avg_pool_grad(gx, gy, g):
        H, W = g[0], g[1]
        for j in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            r = j // W
            avg_pool_grad_at(gx, gy, r // H, r % H, j % W, g)

    return device.launcher(avg_pool_grad)


avg_pool_kernel = Kernel(cpu=_avg_pool_cpu, cuda=_avg_pool_cuda)
avg_pool_grad_kernel = Kernel(cpu=_avg_pool_grad_cpu, cuda=_avg_pool_grad_cuda)


# ----------------------------------------------------------------------------- op
class AvgPool2d(Function):
    def __init__(self, geometry):
        self.g = geometry

    def forward(self, x):
        N, C = x.shape[:2]
        self.x_shape = x.shape
        y = device.empty((N, C, self.g[2], self.g[3]), x.dtype, device.device_of(x))
        if y.size:
            avg_pool_kernel(device.flat(y), device.flat(x), self.g)
        return y

    def backward(self, gy):
        gx = device.empty(self.x_shape, gy.dtype, device.device_of(gy))
        if gx.size:
            avg_pool_grad_kernel(device.flat(gx), device.flat(gy), self.g)
        return (gx,)


def _avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    op = "avg_pool2d"
    check_rank4(op, x)
    g = pool_geometry(op, x.shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and int(divisor_override) <= 0:
        raise ValueError(f"{op}: divisor_override must be positive, got {divisor_override}")
    H, W, OH, OW, KH, KW, SH, SW, PH, PW = g[:10]
    override = 0 if divisor_override is None else int(divisor_override)
    g = (H, W, OH, OW, KH, KW, SH, SW, PH, PW, int(bool(count_include_pad)), override)
    return AvgPool2d(g)(x)


def avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """``torch.nn.functional.avg_pool2d``."""
    return batched(
        _avg_pool2d,
        input,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
    )
