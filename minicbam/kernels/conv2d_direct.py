"""Direct 2-D convolution for tiny channel counts (conv2d.py picks it; see DIRECT_MAX_PRODUCT).

Same maths as conv2d.py, without im2col. x (N, C, H, W), w (CO, Cg, KH, KW) with Cg = C/G and
COg = CO/G per group, geom = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW) (ph, pw: top and left
padding), group of channel co: g = co // COg, of input channel c: g = c // Cg:

    y[n, co, oh, ow]  = sum_{ci, kh, kw} w[co, ci, kh, kw] x[n, g*Cg + ci, oh*sh - ph + kh*dh,
                                                              ow*sw - pw + kw*dw]
    gx[n, c, h, v]    = sum over co in group g, (kh, kw) and (oh, ow) with
                        h = oh*sh - ph + kh*dh, v = ow*sw - pw + kw*dw of
                        w[co, c - g*Cg, kh, kw] gy[n, co, oh, ow]
    gw[co, ci, kh, kw] = sum_n P[n, k],  k = ((co*Cg + ci)*KH + kh)*KW + kw, with
                        P[n, k] = sum_{oh, ow} gy[n, co, oh, ow] x[n, g*Cg + ci, h, v]
(positions in the padding read 0; the bias is added and differentiated by conv2d.py.)

gx is a gather: a worker owns a tile of gx and sums the output positions and taps that read
it, so there are no atomics. gw is reduced per (sample, weight element) into P in float64,
then over n in a fixed order: the result does not depend on the thread count.

Bodies compute a rectangular tile [h_lo, h_hi) x [w_lo, w_hi) of one output (or gx) plane with
every tap's valid row and column range computed once per tap (``span``), so the innermost loop
over columns is branch-free. With unit column stride it runs over 1-D row slices indexed from 0:
LLVM can then prove the indices non-negative and vectorise (indexing the 4-D arrays with
``w0 + ow`` keeps a wraparound check per element and measured ~3x slower). The CPU launchers
take a whole plane per ``prange`` iteration (the tap maths is paid once per plane and the plane
stays in L1); the CUDA kernels take one element per thread in a grid-stride loop (a 1 x 1 tile).
"""

import numpy as np
from numba import float64, int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.kernels.im2col import valid_range

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def span(a0, s, A, lo_o, hi_o):
    """[lo, hi): the o in [lo_o, hi_o) whose input index a0 + o*s lies in [0, A)."""
    lo, hi = valid_range(a0, s, A, hi_o)
    lo = max(lo, lo_o)
    return lo, max(hi, lo)


# ----------------------------------------------------------------------------- bodies
@register_jitable
def conv_tile(y, x, w, n, co, oh0, oh1, ow0, ow1, geom, G, zero):
    """y[n, co, oh0:oh1, ow0:ow1] (without bias)."""
    KH, KW, sh, sw, ph, pw, dh, dw, _OH, _OW = geom
    Cg = w.shape[1]
    c0 = (co // (y.shape[1] // G)) * Cg
    for oh in range(oh0, oh1):
        for ow in range(ow0, ow1):
            y[n, co, oh, ow] = zero
    for kh in range(KH):
        h0 = kh * dh - ph
        lo_h, hi_h = span(h0, sh, x.shape[2], oh0, oh1)
        for kw in range(KW):
            w0 = kw * dw - pw
            lo, hi = span(w0, sw, x.shape[3], ow0, ow1)
            for ci in range(Cg):
                wv = w[co, ci, kh, kw]
                for oh in range(lo_h, hi_h):
                    h = h0 + oh * sh
                    if sw == 1:  # unit stride: contiguous row slices, vectorises on the CPU
                        ys, xs = y[n, co, oh, lo:hi], x[n, c0 + ci, h, w0 + lo : w0 + hi]
                        for j in range(hi - lo):
                            ys[j] += wv * xs[j]
                    else:
                        for ow in range(lo, hi):
                            y[n, co, oh, ow] += wv * x[n, c0 + ci, h, w0 + ow * sw]


@register_jitable
def input_grad_tile(gx, gy, w, n, c, h_lo, h_hi, w_lo, w_hi, geom, G, zero):
    """gx[n, c, h_lo:h_hi, w_lo:w_hi]: every (co, kh, kw, oh, ow) that read it."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    Cg = w.shape[1]
    COg = gy.shape[1] // G
    g = c // Cg
    ci = c - g * Cg
    for h in range(h_lo, h_hi):
        for v in range(w_lo, w_hi):
            gx[n, c, h, v] = zero
    for kh in range(KH):
        h0 = kh * dh - ph
        lo_h, hi_h = span(h0 - h_lo, sh, h_hi - h_lo, 0, OH)  # oh reading rows in the tile
        for kw in range(KW):
            w0 = kw * dw - pw
            lo, hi = span(w0 - w_lo, sw, w_hi - w_lo, 0, OW)
            for co in range(g * COg, (g + 1) * COg):
                wv = w[co, ci, kh, kw]
                for oh in range(lo_h, hi_h):
                    h = h0 + oh * sh
                    if sw == 1:
                        gs, gys = gx[n, c, h, w0 + lo : w0 + hi], gy[n, co, oh, lo:hi]
                        for j in range(hi - lo):
                            gs[j] += wv * gys[j]
                    else:
                        for ow in range(lo, hi):
                            gx[n, c, h, w0 + ow * sw] += wv * gy[n, co, oh, ow]


@register_jitable
def weight_grad_part(gy, x, n, k, Cg, geom, G):
    """P[n, k]: sample n's float64 sum for weight element k = ((co*Cg + ci)*KH + kh)*KW + kw."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    kw = k % KW
    kh = (k // KW) % KH
    ci = (k // (KH * KW)) % Cg
    co = k // (Cg * KH * KW)
    c = (co // (gy.shape[1] // G)) * Cg + ci
    h0, w0 = kh * dh - ph, kw * dw - pw
    lo_h, hi_h = valid_range(h0, sh, x.shape[2], OH)
    lo, hi = valid_range(w0, sw, x.shape[3], OW)
    acc = float64(0.0)
    for oh in range(lo_h, hi_h):
        h = h0 + oh * sh
        if sw == 1:
            gys, xs = gy[n, co, oh, lo:hi], x[n, c, h, w0 + lo : w0 + hi]
            for j in range(hi - lo):
                acc += gys[j] * xs[j]
        else:
            for ow in range(lo, hi):
                acc += gy[n, co, oh, ow] * x[n, c, h, w0 + ow * sw]
    return acc


@register_jitable
def sum_parts(gw, part, k):
    """gw[k] = sum_n part[n, k], in the order of n."""
    acc = float64(0.0)
    for n in range(part.shape[0]):
        acc += part[n, k]
    gw[k] = acc


# CPU copies of the bodies, inlined into the prange loops (array arguments on every call
# cost more than a small tile); the CUDA kernels call the register_jitable originals.
_conv_tile = njit(inline="always")(conv_tile)
_input_grad_tile = njit(inline="always")(input_grad_tile)
_weight_grad_part = njit(inline="always")(weight_grad_part)


# ----------------------------------------------------------------------------- CPU
@njit(parallel=True, cache=True, nogil=True)
def _conv_cpu(y, x, w, geom, G, zero):
    CO, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for i in prange(y.shape[0] * CO):
        t = int64(i)  # a prange index can be unsigned; keep index maths signed
        _conv_tile(y, x, w, t // CO, t % CO, 0, OH, 0, OW, geom, G, zero)


@njit(parallel=True, cache=True, nogil=True)
def _input_grad_cpu(gx, gy, w, geom, G, zero):
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    for i in prange(gx.shape[0] * C):
        t = int64(i)
        _input_grad_tile(gx, gy, w, t // C, t % C, 0, H, 0, W, geom, G, zero)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _weight_grad_parts_cpu(part, gy, x, Cg, geom, G):
    # one sample per iteration: its x and gy planes stay in cache for all K weight elements
    for i in prange(part.shape[0]):
        n = int64(i)
        for k in range(part.shape[1]):
            part[n, k] = _weight_grad_part(gy, x, n, k, Cg, geom, G)


@njit(cache=True)
def _sum_parts_cpu(gw, part):
    for k in range(gw.size):
        sum_parts(gw, part, k)


# ----------------------------------------------------------------------------- CUDA
@device.cuda_factory
def _conv_cuda():

    @cuda.jit
    def conv(y, x, w, geom, G, zero):
        CO, OH, OW = y.shape[1], y.shape[2], y.shape[3]
        for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            ow = t % OW
            oh = (t // OW) % OH
            p = t // (OW * OH)
            conv_tile(y, x, w, p // CO, p % CO, oh, oh + 1, ow, ow + 1, geom, G, zero)

    return device.launcher(conv)


@device.cuda_factory
def _input_grad_cuda():

    @cuda.jit
    def input_grad(gx, gy, w, geom, G, zero):
        C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
        for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            v = t % W
            h = (t // W) % H
            p = t // (W * H)
            input_grad_tile(gx, gy, w, p // C, p % C, h, h + 1, v, v + 1, geom, G, zero)

    return device.launcher(input_grad)


@device.cuda_factory
def _weight_grad_parts_cuda():

    @cuda.jit
    def weight_grad_parts(part, gy, x, Cg, geom, G):
        K = part.shape[1]
        for t in range(cuda.grid(1), part.size, cuda.gridsize(1)):
            part[t // K, t % K] = weight_grad_part(gy, x, t // K, t % K, Cg, geom, G)

    return device.launcher(weight_grad_parts)


@device.cuda_factory
def _sum_parts_cuda():

    @cuda.jit
    def sum_parts_kernel(gw, part):
        for k in range(cuda.grid(1), gw.size, cuda.gridsize(1)):
            sum_parts(gw, part, k)

    return device.launcher(sum_parts_kernel)


# The CPU calls give the work (multiply-adds) as the size: the parallel versions compile and
# run only from LARGE_INPUT_ELEMENTS of it (device.Kernel), the serial twins below that.
conv_kernel = Kernel(
    cpu=_conv_cpu,
    cuda=_conv_cuda,
    name="conv2d_direct",
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
input_grad_kernel = Kernel(
    cpu=_input_grad_cpu,
    cuda=_input_grad_cuda,
    name="conv2d_direct_gx",
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
# float64_math: P and its sum over samples accumulate in float64 on purpose.
weight_grad_parts_kernel = Kernel(
    cpu=_weight_grad_parts_cpu,
    cuda=_weight_grad_parts_cuda,
    float64_math=True,
    name="conv2d_direct_gw",
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
sum_parts_kernel = Kernel(
    cpu=_sum_parts_cpu, cuda=_sum_parts_cuda, float64_math=True, name="conv2d_direct_gw_sum"
)


# ----------------------------------------------------------------------------- entry points
def _geom(geom):
    return tuple(int(g) for g in geom)


def _launch(kernel, work, out, *args):
    """kernel(out, *args); on the CPU with ``work`` (multiply-adds) as the call's size."""
    if isinstance(out, np.ndarray):
        return kernel.call_cpu(work, out, *args)
    return kernel(out, *args)


def conv_direct(y, x, w, geom, groups):
    """Fill y (N, CO, OH, OW) with the convolution of x by w (no bias)."""
    if y.size:
        work = y.size * w.shape[1] * w.shape[2] * w.shape[3]
        _launch(conv_kernel, work, y, x, w, _geom(geom), int(groups), x.dtype.type(0))
    return y


def conv_direct_input_grad(gx, gy, w, geom, groups):
    """Fill gx (N, C, H, W) with the input gradient for output gradient gy."""
    if gx.size:
        work = gx.size * (w.shape[0] // groups) * w.shape[2] * w.shape[3]
        _launch(input_grad_kernel, work, gx, gy, w, _geom(geom), int(groups), gx.dtype.type(0))
    return gx


def conv_direct_weight_grad(gy, x, w_shape, geom, groups):
    """The weight gradient (w_shape) for output gradient gy: float64 sums, then x's dtype."""
    dev = device.device_of(x)
    if x.shape[0] == 0:
        return device.zeros(w_shape, x.dtype, dev)
    gw = device.empty(w_shape, x.dtype, dev)
    part = device.empty((x.shape[0], gw.size), np.float64, dev)
    work = part.size * gy.shape[2] * gy.shape[3]
    _launch(weight_grad_parts_kernel, work, part, gy, x, int(w_shape[1]), _geom(geom), int(groups))
    sum_parts_kernel(device.flat(gw), part)
    return gw
