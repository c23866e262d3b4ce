"""im2col and its adjoint col2im, the data movement of a convolution done as a GEMM.

Geometry ``geom = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW)`` (ph, pw: top and left padding).
For x (N, C, H, W) and col (N, C*KH*KW, OH*OW), row r = (c*KH + kh)*KW + kw:

    im2col:  col[n, r, oh*OW + ow] = x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
             (0 where the position falls in the padding)
    col2im:  gx[n, c, h, w] = sum over (kh, kw, oh, ow) with h = oh*sh - ph + kh*dh and
             w = ow*sw - pw + kw*dw of gcol[n, r, oh*OW + ow]

col2im is written as a gather, so it needs no atomics and is deterministic. On the CPU one
task owns one plane (n, c) of gx and adds every column entry that im2col read from it (rows
r = (c, kh, kw) of gcol[n]), and a task fills one plane's rows of col, both through one
table of input positions that every plane of a call shares (``tap_sources``). On CUDA one
thread owns one element: im2col_at reads the input value of one col entry, col2im_at sums the (at most KH*KW) col entries of one gx
element, in the order the CPU adds them, so both devices give the same bits.
"""

import numpy as np
from numba import int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def valid_range(w0, s, W, OW):
    """[lo, hi): the ow in [0, OW) whose input column w0 + ow*s lies in [0, W)."""
    lo = 0 if w0 >= 0 else (-w0 + s - 1) // s
    hi = (W - w0 + s - 1) // s  # first ow with w0 + ow*s >= W (ceil division)
    lo = min(lo, OW)
    hi = min(max(hi, lo), OW)
    return lo, hi


@register_jitable
def im2col_at(x, n, r, q, geom, zero):
    """col[n, r, q]: the input value that kernel tap r = (c, kh, kw) sees at output position
    q = oh*OW + ow, or zero in the padding (one element, for one CUDA thread each)."""
    KH, KW, sh, sw, ph, pw, dh, dw, _, OW = geom
    kw = r % KW
    kh = (r // KW) % KH
    c = r // (KH * KW)
    oh, ow = q // OW, q % OW
    h = oh * sh - ph + kh * dh
    w = ow * sw - pw + kw * dw
    if h < 0 or h >= x.shape[2] or w < 0 or w >= x.shape[3]:
        return zero
    return x[n, c, h, w]


@register_jitable
def col2im_at(gcol, n, c, h, w, geom, zero):
    """gx[n, c, h, w] gathered: the sum of the col entries im2col read from (h, w), taps in
    (kh, kw) order, the order in which _col2im_cpu adds them (so both give the same bits).
    Tap (kh, kw) read (h, w) at output (oh, ow) iff h + ph - kh*dh = oh*sh with 0 <= oh < OH,
    and likewise for w."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    acc = zero
    for kh in range(KH):
        th = h + ph - kh * dh
        if th < 0 or th % sh != 0 or th // sh >= OH:
            continue
        base = (th // sh) * OW
        for kw in range(KW):
            tw = w + pw - kw * dw
            if tw < 0 or tw % sw != 0 or tw // sw >= OW:
                continue
            acc += gcol[n, (c * KH + kh) * KW + kw, base + tw // sw]
    return acc


# CPU im2col: every plane of a call reads the same input positions, so they are listed once
# per call (tap_sources: KH*KW*OH*OW entries, next to col's C*KH*KW*OH*OW per sample; the
# CPU and CUDA kernels keep one argument list) and each col row is a plain gather through its
# table: no per-row bounds logic, which dominated on short output rows (ResNet's stride-2
# convs: OW = 4 to 16; their times before and after: docs/performance.md, "im2col"). One
# (n, c) plane per iteration, so the input plane stays in L1/L2 while its KH*KW col rows are
# written; col may be a strided view (conv2d's joined layout, (C*KH*KW, nb, L) seen as
# (nb, C*KH*KW, L)); each row is a 1-D contiguous view. nogil: conv2d may call it from its
# worker threads.
@register_jitable
def tap_sources(src, geom, H, W):
    """Fill src (KH*KW, OH*OW): src[kh*KW + kw, oh*OW + ow] = h*W + w, the flat position in
    an (H, W) input plane that tap (kh, kw) reads at output (oh, ow), or -1 where that falls
    in the padding."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    for kh in range(KH):
        for kw in range(KW):
            for oh in range(OH):
                h = oh * sh - ph + kh * dh
                for ow in range(OW):
                    w = ow * sw - pw + kw * dw
                    inside = h >= 0 and h < H and w >= 0 and w < W
                    src[kh * KW + kw, oh * OW + ow] = h * W + w if inside else -1


@njit(parallel=True, cache=True, nogil=True)
def _im2col_cpu(col, x, geom, zero):
    C, KK, L = x.shape[1], geom[0] * geom[1], geom[8] * geom[9]
    src = np.empty((KK, L), np.int64)  # KK*L entries, a small fraction of col's C*KK*L*nb
    tap_sources(src, geom, x.shape[2], x.shape[3])
    planes = x.reshape(x.shape[0], C, x.shape[2] * x.shape[3])
    for i in prange(col.shape[0] * C):
        t = int64(i)  # a prange index can be unsigned; keep index maths signed
        n, c = t // C, t % C
        plane = planes[n, c]
        for k in range(KK):
            row, s = col[n, c * KK + k], src[k]
            for q in range(L):
                j = s[q]
                row[q] = plane[j] if j >= 0 else zero


# CPU col2im through the same table: one plane of gx per iteration, the rows r = (c, kh, kw)
# of gcol[n] added into it in tap order, then position order (each gx element gets its
# entries in (kh, kw) order, as col2im_at sums them on CUDA: the same bits on both devices).
@njit(parallel=True, cache=True, nogil=True)
def _col2im_cpu(gx, gcol, geom, zero):
    C, KK, L = gx.shape[1], geom[0] * geom[1], geom[8] * geom[9]
    src = np.empty((KK, L), np.int64)
    tap_sources(src, geom, gx.shape[2], gx.shape[3])
    planes = gx.reshape(gx.shape[0], C, gx.shape[2] * gx.shape[3])
    for i in prange(gx.shape[0] * C):
        t = int64(i)
        n, c = t // C, t % C
        plane = planes[n, c]
        for m in range(plane.size):
            plane[m] = zero
        for k in range(KK):
            row, s = gcol[n, c * KK + k], src[k]
            for q in range(L):
                j = s[q]
                if j >= 0:
                    plane[j] += row[q]


# CUDA launchers: one thread per output element in a grid-stride loop. im2col's flat index
# runs along col's last axis (contiguous even in conv2d's joined layout): neighbouring
# threads write neighbouring addresses. col2im gathers, one thread per element of gx: no
# two threads write one address, so no atomics and the same bits on every run.
@device.cuda_factory
def _im2col_cuda():

    @cuda.jit
    def im2col(col, x, geom, zero):
        R, L = col.shape[1], col.shape[2]
        for i in range(cuda.grid(1), col.size, cuda.gridsize(1)):
            t = i // L
            col[t // R, t % R, i % L] = im2col_at(x, t // R, t % R, i % L, geom, zero)

    return device.launcher(im2col)


@device.cuda_factory
def _col2im_cuda():

    @cuda.jit
    def col2im(gx, gcol, geom, zero):
        C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
        for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            w, t = i % W, i // W
            h, t = t % H, t // H
            gx[t // C, t % C, h, w] = col2im_at(gcol, t // C, t % C, h, w, geom, zero)

    return device.launcher(col2im)


# data movement: threads pay only on large col buffers (device.Kernel)
im2col_kernel = Kernel(
    cpu=_im2col_cpu, cuda=_im2col_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
col2im_kernel = Kernel(
    cpu=_col2im_cpu, cuda=_col2im_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


def im2col(col, x, geom):
    """Fill col (nb, C*KH*KW, OH*OW) from x (nb, C, H, W); see the module docstring."""
    if col.size:
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)  # (a batch slice already is: no copy)
        im2col_kernel(col, x, tuple(int(g) for g in geom), x.dtype.type(0))
    return col


def col2im(gx, gcol, geom):
    """Fill gx (nb, C, H, W) with the adjoint of im2col applied to gcol."""
    if gx.size:
        if isinstance(gx, np.ndarray) and not gx.flags.c_contiguous:
            raise ValueError("col2im: gx must be C-contiguous (it is written in place)")
        col2im_kernel(gx, gcol, tuple(int(g) for g in geom), gx.dtype.type(0))
    return gx
