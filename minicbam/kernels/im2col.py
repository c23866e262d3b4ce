"""im2col and its adjoint col2im, the data movement of a convolution done as a GEMM.

Geometry ``geom = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW)`` (ph, pw: top and left padding).
For x (N, C, H, W) and col (N, C*KH*KW, OH*OW), row r = (c*KH + kh)*KW + kw:

    im2col:  col[n, r, oh*OW + ow] = x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
             (0 where the position falls in the padding)
    col2im:  gx[n, c, h, w] = sum over (kh, kw, oh, ow) with h = oh*sh - ph + kh*dh and
             w = ow*sw - pw + kw*dw of gcol[n, r, oh*OW + ow]

col2im is written as a gather, so it needs no atomics and is deterministic. On the CPU one
task owns one plane (n, c) of gx and adds every column entry that im2col read from it (rows
r = (c, kh, kw) of gcol[n]), with the per-tap index maths hoisted out of the pixel loops; a
task fills one plane of col likewise. On CUDA one thread owns one element: im2col_at reads
the input value of one col entry, col2im_at sums the (at most KH*KW) col entries of one gx
element, in the order the CPU adds them, so both devices give the same bits.
"""

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
    (kh, kw) order, the order in which col2im_plane adds them (so both give the same bits).
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


@register_jitable
def col2im_plane(gx, gcol, n, c, geom, zero):
    """gx[n, c] (one H x W plane): the sum of every col entry im2col read from it, i.e.
    the rows r = (c, kh, kw) of gcol[n] scattered back within this plane only."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    H, W = gx.shape[2], gx.shape[3]
    for h in range(H):
        for w in range(W):
            gx[n, c, h, w] = zero
    for kh in range(KH):
        for kw in range(KW):
            r = (c * KH + kh) * KW + kw
            w0 = kw * dw - pw
            lo, hi = valid_range(w0, sw, W, OW)
            for oh in range(OH):
                h = oh * sh - ph + kh * dh
                if h < 0 or h >= H:
                    continue
                base = oh * OW
                if sw == 1:  # unit stride: a plain add the compiler can vectorise
                    for ow in range(lo, hi):
                        gx[n, c, h, w0 + ow] += gcol[n, r, base + ow]
                else:
                    for ow in range(lo, hi):
                        gx[n, c, h, w0 + ow * sw] += gcol[n, r, base + ow]


# The CPU launcher inlines its copy of the body (a plain call per plane costs more).
col2im_plane_cpu = njit(inline="always")(col2im_plane)


# CPU launchers: one (n, c) plane per iteration, so the input plane stays in L1/L2 while
# its KH*KW col rows are written, and each col row is taken once as a 1-D view (cheap
# indexing; a C-contiguous row vectorises). col may be a strided view (conv2d's joined
# layout, (C*KH*KW, nb, L) seen as (nb, C*KH*KW, L)). nogil: conv2d may call them from
# its worker threads.
@njit(inline="always")
def _im2col_plane(col, x, n, c, geom, zero):
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    H, W = x.shape[2], x.shape[3]
    for kh in range(KH):
        for kw in range(KW):
            r = (c * KH + kh) * KW + kw
            w0 = kw * dw - pw
            lo, hi = valid_range(w0, sw, W, OW)
            for oh in range(OH):
                h = oh * sh - ph + kh * dh
                base = oh * OW
                if h < 0 or h >= H:
                    for ow in range(OW):
                        col[n, r, base + ow] = zero
                    continue
                for ow in range(lo):
                    col[n, r, base + ow] = zero
                if sw == 1:
                    for ow in range(lo, hi):
                        col[n, r, base + ow] = x[n, c, h, w0 + ow]
                else:
                    for ow in range(lo, hi):
                        col[n, r, base + ow] = x[n, c, h, w0 + ow * sw]
                for ow in range(hi, OW):
                    col[n, r, base + ow] = zero


@njit(parallel=True, cache=True, nogil=True)
def _im2col_cpu(col, x, geom, zero):
    C = x.shape[1]
    for i in prange(col.shape[0] * C):
        t = int64(i)  # a prange index can be unsigned; keep index maths signed
        _im2col_plane(col, x, t // C, t % C, geom, zero)


@njit(parallel=True, cache=True, nogil=True)
def _col2im_cpu(gx, gcol, geom, zero):
    C = gx.shape[1]
    for i in prange(gx.shape[0] * C):
        t = int64(i)
        col2im_plane_cpu(gx, gcol, t // C, t % C, geom, zero)


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
        im2col_kernel(col, x, tuple(int(g) for g in geom), x.dtype.type(0))
    return col


def col2im(gx, gcol, geom):
    """Fill gx (nb, C, H, W) with the adjoint of im2col applied to gcol."""
    if gx.size:
        col2im_kernel(gx, gcol, tuple(int(g) for g in geom), gx.dtype.type(0))
    return gx
