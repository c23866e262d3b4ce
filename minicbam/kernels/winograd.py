"""Winograd F(4x4, 3x3) convolution on the CPU: forward, input gradient and weight gradient
of a 3x3, stride-1, dilation-1, single-group convolution (Lavin & Gray 2015).

The output is cut into 4x4 tiles; tile t = (n, i, j) reads the 6x6 input patch d_t whose
corner is x[n, :, 4i - pt, 4j - pl] (zeros outside x). With the constant matrices B^T (6x6),
G (6x3) and A^T (4x6) below, per channel pair (c, co):

    U[k, co, c]    = (G g[co, c] G^T)[k]                  (weight transform, k in the 6x6 points)
    V[k, t, c]     = (B^T d_t[c] B)[k]                    (input transform)
    M[k, t, co]    = sum_c V[k, t, c] U[k, co, c]         (36 GEMMs (tiles, C) @ (C, CO))
    y_tile(t, co)  = A^T M[:, t, co] A                    (output transform, 4x4)

which needs 36 multiplies per 16 outputs and channel pair instead of 144 (4x less GEMM work
than im2col). The weight transform is one GEMM: U (36, CO*C) = (G (x) G) (36, 9) @ w^T
(9, CO*C); the forward reads its planes transposed (BLAS's transpose flag, no copy).

Input gradient: gx is the "full" correlation of gy with the flipped, channel-transposed kernel
w'[c, co, a, b] = w[co, c, 2 - a, 2 - b], with padding 2 - p on each side, so it is the same
forward on (gy, w') (any padding <= 2); the flip is G (x) G's columns reversed.

Weight gradient: y is linear in g, and its adjoint per tile is
<gy_t, A^T (G g G^T (.) V_t) A> = <G^T ((A gy_t A^T) (.) V_t) G, g>, so with
Mg[:, :, t, co] = A gy_t A^T (gy's 4x4 tile transformed to 6x6)

    gU[k, co, c] = sum_t Mg[k, t, co] V[k, t, c]          (36 GEMMs (CO, tiles) @ (tiles, C))
    gw[co, c]    = G^T gU[:, co, c] G                     (one GEMM (CO*C, 36) @ (G (x) G))

reusing the forward's input transform (recomputed per block rather than stored).

CPU layout: every transform loops innermost over channels, which are contiguous in V, U and M
(numba vectorises those loops); patches are gathered into a small (6, 6, C) scratch first,
and output tiles scattered from a (4, 4, CO) one, with the channel loop of that gather and
scatter innermost on maps smaller than the channel count and outermost otherwise
(channels_innermost).
Work is split into blocks of tiles, one task each on the CPU task pool (task_pool.py: BLAS
single-threaded per worker): a block transforms its tiles, runs its 36 GEMMs and
inverse-transforms while V and M are still in cache. The pool's workers are Python threads,
so the transforms are compiled ``nogil``: holding the GIL, they ran one worker at a time
(26-29 ms a pass instead of 15-19 ms for a 64 -> 64 conv at 32x32, batch 64, on 2 cores).
Deep layers (few tiles, many channels: _by_planes) go by planes instead: every tile is
transformed into one V, the 36 GEMMs are split by plane over the pool, so that each task
reads only its planes of U rather than every block reading all of it. The tile axis of V
and M has one spare row, so that their 36 planes are not a power of two apart (planes that
far apart share cache sets, and the transforms ran 3-4x slower).

Accuracy: F(4x4, 3x3) in float32 rounds a little more than a direct sum (its matrices have
entries up to 8 and 1/24): docs/performance.md gives the measured errors. The algorithm is
exact in exact arithmetic, so float64 results match the direct convolution to ~1e-14.
"""

import itertools
import threading

import numpy as np
from numba import njit
from numba.extending import register_jitable

from minicbam.kernels.task_pool import cpu_workers, run_tasks

BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)
GG = np.kron(G, G)  # (36, 9): U = G g G^T flattened, GG[u*6 + v, a*3 + b] = G[u, a] G[v, b]
TILE, ALPHA = 4, 6  # output tile side, input patch side (TILE + 3 - 1)

BLOCK_BYTES = 3 << 19  # V + M of one block: about an L2 cache
MIN_BLOCK, MAX_BLOCK = 32, 256  # tiles per block (rows of the block's GEMMs)
# Work below this many GEMM flops runs on the calling thread: a hand-off to the task pool
# and back cost 0.3-0.6 ms, more than a digits-CNN-sized conv's blocks (32 -> 64 channels
# at 4x4, batch 128: 19 MFLOP, its forward 2.4 ms through the pool, see benchmarks/README.md).
MIN_POOLED_FLOPS = 1 << 27
# By planes (_by_planes) once U has at least 1/16 of the elements of V + M, and V + M fit in
# PLANES_MAX_BYTES. Measured (2 cores, batch 64, forward / input grad / weight grad in ms,
# by blocks -> by planes): 128 ch at 16x16 (U/(V+M) = 1/16) 16.7/13.6/11.3 -> 12.2/11.7/11.2;
# 256 at 8x8 15.9/12.0/14.1 -> 9.4/9.0/7.7; 512 at 4x4 17.3/13.3/19.0 -> 13.0/11.6/10.6;
# 64 at 32x32 (1/128) 22.6/18.0/14.1 -> 31.6/24.9/26.9; at 1/16 and below the two tie.
PLANES_FROM = 1 / 16
PLANES_MAX_BYTES = 128 << 20


# ----------------------------------------------------------------------------- kernels
# The 1-D transforms written out (B^T, A^T and A have many zeros and repeated entries); k holds
# the constants (2, 4, 5, 8) in the data's dtype, as a float64 literal would promote float32
# loops to float64. Each 2-D transform is two passes of 1-D ones, each a loop over channels
# innermost (contiguous, so numba vectorises it).
@register_jitable
def _bt6(d0, d1, d2, d3, d4, d5, k):
    """B^T d for one column d (6 values)."""
    two, four, five = k[0], k[1], k[2]
    return (
        four * d0 - five * d2 + d4,
        d3 + d4 - four * (d1 + d2),
        four * (d1 - d2) - d3 + d4,
        two * (d3 - d1) - d2 + d4,
        two * (d1 - d3) - d2 + d4,
        four * d1 - five * d3 + d5,
    )


@register_jitable
def _at6(m0, m1, m2, m3, m4, m5, k):
    """A^T m for one column m (6 values -> 4)."""
    two, four, eight = k[0], k[1], k[3]
    return (
        m0 + m1 + m2 + m3 + m4,
        (m1 - m2) + two * (m3 - m4),
        (m1 + m2) + four * (m3 + m4),
        (m1 - m2) + eight * (m3 - m4) + m5,
    )


@register_jitable
def _a4(g0, g1, g2, g3, k):
    """A g for one column g (4 values -> 6)."""
    two, four, eight = k[0], k[1], k[3]
    return (
        g0,
        g0 + g1 + g2 + g3,
        g0 - g1 + g2 - g3,
        g0 + two * g1 + four * g2 + eight * g3,
        g0 - two * g1 + four * g2 - eight * g3,
        g3,
    )


@njit(cache=True, fastmath=True, nogil=True)
def _input_transform(V, x, t0, t1, row0, th, tw, pt, pl, k, patch, tmp, channels_inner):
    """V[:, :, row0 + t - t0, :] = B^T d_t B for tiles t0 <= t < t1 (patch, tmp: (6, 6, C));
    ``channels_inner``: the patch gather's loop order (see channels_innermost)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for t in range(t0, t1):
        n, rest = t // (th * tw), t % (th * tw)
        r0, s0 = (rest // tw) * 4 - pt, (rest % tw) * 4 - pl
        if channels_inner:
            for u in range(6):
                for v in range(6):
                    r, s = r0 + u, s0 + v
                    if r >= 0 and r < H and s >= 0 and s < W:
                        for c in range(C):
                            patch[u, v, c] = x[n, c, r, s]
                    else:
                        for c in range(C):
                            patch[u, v, c] = 0
        else:
            for c in range(C):
                for u in range(6):
                    r = r0 + u
                    for v in range(6):
                        s = s0 + v
                        if r >= 0 and r < H and s >= 0 and s < W:
                            patch[u, v, c] = x[n, c, r, s]
                        else:
                            patch[u, v, c] = 0
        for v in range(6):
            for c in range(C):
                e = _bt6(
                    patch[0, v, c],
                    patch[1, v, c],
                    patch[2, v, c],
                    patch[3, v, c],
                    patch[4, v, c],
                    patch[5, v, c],
                    k,
                )
                tmp[0, v, c] = e[0]
                tmp[1, v, c] = e[1]
                tmp[2, v, c] = e[2]
                tmp[3, v, c] = e[3]
                tmp[4, v, c] = e[4]
                tmp[5, v, c] = e[5]
        for i in range(6):
            for c in range(C):
                e = _bt6(
                    tmp[i, 0, c],
                    tmp[i, 1, c],
                    tmp[i, 2, c],
                    tmp[i, 3, c],
                    tmp[i, 4, c],
                    tmp[i, 5, c],
                    k,
                )
                V[i, 0, row0 + t - t0, c] = e[0]
                V[i, 1, row0 + t - t0, c] = e[1]
                V[i, 2, row0 + t - t0, c] = e[2]
                V[i, 3, row0 + t - t0, c] = e[3]
                V[i, 4, row0 + t - t0, c] = e[4]
                V[i, 5, row0 + t - t0, c] = e[5]


@njit(cache=True, fastmath=True, nogil=True)
def _output_transform(y, M, t0, t1, row0, th, tw, k, ytile, tmp, channels_inner):
    """y's 4x4 tiles t0 <= t < t1 (clipped at its edges) = A^T M[:, :, row0 + t - t0, :] A
    (ytile (4, 4, CO), tmp (6, 6, CO) scratch); ``channels_inner``: the tile scatter's loop
    order (see channels_innermost)."""
    CO, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for t in range(t0, t1):
        tt = row0 + t - t0
        for v in range(6):
            for co in range(CO):
                e = _at6(
                    M[0, v, tt, co],
                    M[1, v, tt, co],
                    M[2, v, tt, co],
                    M[3, v, tt, co],
                    M[4, v, tt, co],
                    M[5, v, tt, co],
                    k,
                )
                tmp[0, v, co] = e[0]
                tmp[1, v, co] = e[1]
                tmp[2, v, co] = e[2]
                tmp[3, v, co] = e[3]
        for a in range(4):
            for co in range(CO):
                e = _at6(
                    tmp[a, 0, co],
                    tmp[a, 1, co],
                    tmp[a, 2, co],
                    tmp[a, 3, co],
                    tmp[a, 4, co],
                    tmp[a, 5, co],
                    k,
                )
                ytile[a, 0, co] = e[0]
                ytile[a, 1, co] = e[1]
                ytile[a, 2, co] = e[2]
                ytile[a, 3, co] = e[3]
        n, rest = t // (th * tw), t % (th * tw)
        r0, s0 = (rest // tw) * 4, (rest % tw) * 4
        rows, cols = min(4, OH - r0), min(4, OW - s0)
        if channels_inner:
            for a in range(rows):
                for b in range(cols):
                    for co in range(CO):
                        y[n, co, r0 + a, s0 + b] = ytile[a, b, co]
        else:
            for co in range(CO):
                for a in range(rows):
                    for b in range(cols):
                        y[n, co, r0 + a, s0 + b] = ytile[a, b, co]


@njit(cache=True, fastmath=True, nogil=True)
def _grad_tile_transform(Mg, gy, t0, t1, row0, th, tw, k, gtile, tmp):
    """Mg[:, :, row0 + t - t0, :] = A gy_t A^T (gy's 4x4 tile, zeros beyond its edges; gtile
    (4, 4, CO), tmp (6, 6, CO) scratch)."""
    CO, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    for t in range(t0, t1):
        n, rest = t // (th * tw), t % (th * tw)
        r0, s0 = (rest // tw) * 4, (rest % tw) * 4
        for co in range(CO):
            for a in range(4):
                for b in range(4):
                    r, s = r0 + a, s0 + b
                    if r < OH and s < OW:
                        gtile[a, b, co] = gy[n, co, r, s]
                    else:
                        gtile[a, b, co] = 0
        for b in range(4):
            for co in range(CO):
                e = _a4(gtile[0, b, co], gtile[1, b, co], gtile[2, b, co], gtile[3, b, co], k)
                tmp[0, b, co] = e[0]
                tmp[1, b, co] = e[1]
                tmp[2, b, co] = e[2]
                tmp[3, b, co] = e[3]
                tmp[4, b, co] = e[4]
                tmp[5, b, co] = e[5]
        for i in range(6):
            for co in range(CO):
                e = _a4(tmp[i, 0, co], tmp[i, 1, co], tmp[i, 2, co], tmp[i, 3, co], k)
                Mg[i, 0, row0 + t - t0, co] = e[0]
                Mg[i, 1, row0 + t - t0, co] = e[1]
                Mg[i, 2, row0 + t - t0, co] = e[2]
                Mg[i, 3, row0 + t - t0, co] = e[3]
                Mg[i, 4, row0 + t - t0, co] = e[4]
                Mg[i, 5, row0 + t - t0, co] = e[5]


# ----------------------------------------------------------------------------- scratch
_local = threading.local()


def _scratch(name, shape, dtype):
    """A reused C-contiguous array of this thread (contents undefined)."""
    cache = _local.__dict__.setdefault("cache", {})
    size = int(np.prod(shape))
    key = (name, np.dtype(dtype))
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _matrices(dtype):
    """G (x) G and the transforms' constants in the data's dtype (a float64 coefficient would
    promote the float32 loops to float64)."""
    return {"GG": GG.astype(dtype), "k": np.array([2, 4, 5, 8], dtype)}


# ----------------------------------------------------------------------------- geometry
CHANNEL_ORDER = "auto"  # the tests' hook: "inner" or "outer" forces one loop order everywhere


def channels_innermost(plane, channels):
    """The loop order for moving tiles between an NCHW array and a (rows, cols, C) scratch:
    True puts the channel loop innermost (the scratch written contiguously, the array read
    one plane apart), False outermost (the array's rows read, the scratch written C values
    apart). The smaller stride goes innermost. On maps smaller than the channel count (the
    deep layers) the other order's writes, a power of two apart, fall into a few cache
    sets: at 512 channels on 4x4 maps the input transform took 5.7-7.0 ms instead of 1.1-1.4
    (benchmarks/channels_last.py); at 64 channels on 32x32 it is the other way round."""
    if CHANNEL_ORDER != "auto":
        return CHANNEL_ORDER == "inner"
    return plane < channels


def _tiles(OH, OW, N):
    th, tw = -(-OH // TILE), -(-OW // TILE)
    return th, tw, N * th * tw


def _pooled(flops):
    """Whether work of this many flops is worth handing to the task pool."""
    return flops >= MIN_POOLED_FLOPS and cpu_workers() > 1


def _conv_flops(P, C, CO):
    """Flops of a pass's 36 GEMMs over P tiles."""
    return 2 * ALPHA * ALPHA * P * C * CO


def _by_planes(P, C, CO, itemsize):
    """Whether to run a pass by planes (see _forward_by_planes) rather than by blocks of
    tiles: when the transformed weights U (36 C CO) are large next to V and M (36 P (C + CO)),
    every block streams all of U again, and the planes' GEMMs have P rows instead of a
    block's 32-256."""
    vm_bytes = ALPHA * ALPHA * (P + 1) * (C + CO) * itemsize
    return C * CO >= PLANES_FROM * P * (C + CO) and vm_bytes <= PLANES_MAX_BYTES


def _blocks(P, channels, itemsize, pooled):
    """[(t0, t1)] covering P tiles: about BLOCK_BYTES of V + M per block, at least one block
    per worker (when pooled and there are enough tiles), MIN_BLOCK..MAX_BLOCK tiles each."""
    workers = cpu_workers() if pooled else 1
    size = BLOCK_BYTES // (ALPHA * ALPHA * channels * itemsize)
    size = min(MAX_BLOCK, max(MIN_BLOCK, size), -(-P // workers))
    size = max(1, size)
    return [(t0, min(P, t0 + size)) for t0 in range(0, P, size)]


def eligible(w_shape, stride, pads, dilation, groups):
    """Whether this convolution has the geometry the Winograd path computes."""
    return (
        tuple(w_shape[2:]) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and max(pads) <= 2
    )


# ----------------------------------------------------------------------------- forward
def transform_weight(w, flip=False, out=None):
    """U (36, CO, C) for w (CO, C, 3, 3): U[k] = (G g G^T)[k], as one GEMM with G (x) G
    (36, 9); ``flip`` uses the kernel rotated by 180 degrees (the input gradient's). Into
    ``out`` when given (conv3x3 and input_grad pass a reused buffer: a fresh U of a 512 ->
    512 conv is 36 MiB, above malloc's mmap threshold, and its page faults made the
    transform take 10 ms instead of 5)."""
    CO, C = w.shape[:2]
    GGm = _matrices(w.dtype)["GG"]
    U = np.empty((ALPHA * ALPHA, CO, C), w.dtype) if out is None else out
    w9 = np.ascontiguousarray(w).reshape(CO * C, 9)
    GGm = np.ascontiguousarray(GGm[:, ::-1]) if flip else GGm
    # pieces of columns on the task pool: single-threaded BLAS (a short multi-threaded call
    # waits for a time slice when the machine is loaded: 50-90 ms for this 0.1 ms product)
    U2 = U.reshape(ALPHA * ALPHA, CO * C)
    pooled = _pooled(2 * ALPHA * ALPHA * 9 * CO * C)
    pieces = _pieces(CO * C, pooled)
    run_tasks(_product_piece, [(GGm, w9.T, U2, lo, hi, 1) for lo, hi in pieces], pooled)
    return U


def _pieces(size, pooled):
    workers = max(1, min(cpu_workers() if pooled else 1, size))
    bounds = [size * i // workers for i in range(workers + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def _product_piece(a, b, out, lo, hi, axis):
    """out[lo:hi] = a[lo:hi] @ b (axis 0), or out[:, lo:hi] = a @ b[:, lo:hi] (axis 1)."""
    if axis == 0:
        np.matmul(a[lo:hi], b, out=out[lo:hi])
    else:
        np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


def conv3x3(x, w, pads):
    """y = conv2d(x, w) for a 3x3 kernel, stride 1, padding (top, bottom, left, right)."""
    return _winograd(x, transform_weight(w, out=_weight_buffer(w)).swapaxes(1, 2), pads)


def input_grad(gy, w, pads):
    """gx for y = conv3x3(x, w, pads): the full correlation of gy with the flipped,
    channel-transposed kernel, padded by 2 - p."""
    U = transform_weight(w, flip=True, out=_weight_buffer(w))
    return _winograd(gy, U, tuple(2 - p for p in pads))


def _weight_buffer(w):
    """This thread's buffer for U (36, CO, C): used within one pass only."""
    return _scratch("U", (ALPHA * ALPHA,) + tuple(w.shape[:2]), w.dtype)


def _winograd(x, U, pads):
    """The F(4x4, 3x3) pipeline with transformed weights U (36, C, CO) (any strides)."""
    N, C, H, W = x.shape
    CO = U.shape[2]
    pt, pb, pl, pr = pads
    OH, OW = H + pt + pb - 2, W + pl + pr - 2
    x = np.ascontiguousarray(x)
    y = np.empty((N, CO, OH, OW), x.dtype)
    th, tw, P = _tiles(OH, OW, N)
    geom = (th, tw, pt, pl)
    pooled = _pooled(_conv_flops(P, C, CO))
    if _by_planes(P, C, CO, x.dtype.itemsize):
        _forward_by_planes(x, U, y, P, geom, pooled)
        return y
    blocks = _blocks(P, C + CO, x.dtype.itemsize, pooled)
    run_tasks(_forward_block, [(x, U, y, t0, t1, geom) for t0, t1 in blocks], pooled)
    return y


def _forward_by_planes(x, U, y, P, geom, pooled):
    """Few tiles, many channels: transform every tile into V (36, P, C), run the 36 GEMMs
    split by plane (each task reads only its planes of U), then inverse-transform M."""
    C, CO, dtype = x.shape[1], y.shape[1], x.dtype
    V = np.empty((ALPHA, ALPHA, P + 1, C), dtype)  # one spare tile row, as in a block
    M = np.empty((ALPHA, ALPHA, P + 1, CO), dtype)
    ranges = _pieces(P, pooled)
    run_tasks(_input_range, [(V, x, lo, hi, lo, geom) for lo, hi in ranges], pooled)
    V36 = V.reshape(ALPHA * ALPHA, P + 1, C)[:, :P]
    M36 = M.reshape(ALPHA * ALPHA, P + 1, CO)[:, :P]
    planes = _pieces(ALPHA * ALPHA, pooled)
    run_tasks(_planes_product, [(V36, U, M36, k0, k1) for k0, k1 in planes], pooled)
    run_tasks(_output_range, [(y, M, lo, hi, lo, geom) for lo, hi in ranges], pooled)


def _input_range(V, x, lo, hi, row0, geom):
    """V's tile rows row0.. = the input transforms of tiles lo..hi-1 (this thread's scratch)."""
    th, tw, pt, pl = geom
    C, dtype = x.shape[1], x.dtype
    patch = _scratch("patch", (ALPHA, ALPHA, C), dtype)
    tmp = _scratch("tmp", (ALPHA, ALPHA, C), dtype)
    inner = channels_innermost(x.shape[2] * x.shape[3], C)
    k = _matrices(dtype)["k"]
    _input_transform(V, x, lo, hi, row0, th, tw, pt, pl, k, patch, tmp, inner)


def _output_range(y, M, lo, hi, row0, geom):
    """y's tiles lo..hi-1 from M's tile rows row0.. (this thread's scratch)."""
    th, tw = geom[:2]
    CO, dtype = y.shape[1], y.dtype
    ytile = _scratch("ytile", (TILE, TILE, CO), dtype)
    tmp = _scratch("tmp", (ALPHA, ALPHA, CO), dtype)
    inner = channels_innermost(y.shape[2] * y.shape[3], CO)
    _output_transform(y, M, lo, hi, row0, th, tw, _matrices(dtype)["k"], ytile, tmp, inner)


def _grad_range(Mg, gy, lo, hi, row0, geom):
    """Mg's tile rows row0.. = the transforms of gy's tiles lo..hi-1 (this thread's scratch)."""
    th, tw = geom[:2]
    CO, dtype = gy.shape[1], gy.dtype
    gtile = _scratch("gtile", (TILE, TILE, CO), dtype)
    tmp = _scratch("tmp", (ALPHA, ALPHA, CO), dtype)
    _grad_tile_transform(Mg, gy, lo, hi, row0, th, tw, _matrices(dtype)["k"], gtile, tmp)


def _planes_product(a, b, out, k0, k1):
    """out[k] = a[k] @ b[k] for the planes k0 <= k < k1."""
    np.matmul(a[k0:k1], b[k0:k1], out=out[k0:k1])


def _forward_block(x, U, y, t0, t1, geom):
    C, CO, nb = x.shape[1], y.shape[1], t1 - t0
    V = _scratch("V", (ALPHA, ALPHA, nb + 1, C), x.dtype)
    M = _scratch("M", (ALPHA, ALPHA, nb + 1, CO), x.dtype)
    _input_range(V, x, t0, t1, 0, geom)
    np.matmul(
        V.reshape(ALPHA * ALPHA, nb + 1, C)[:, :nb],
        U,
        out=M.reshape(ALPHA * ALPHA, nb + 1, CO)[:, :nb],
    )
    _output_range(y, M, t0, t1, 0, geom)


# ----------------------------------------------------------------------------- weight grad
def weight_grad(x, gy, pads):
    """gw (CO, C, 3, 3) for y = conv3x3(x, w, pads), from x and gy = dL/dy."""
    N, C = x.shape[:2]
    CO, OH, OW = gy.shape[1:]
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy)
    th, tw, P = _tiles(OH, OW, N)
    if P == 0 or C == 0 or CO == 0:
        return np.zeros((CO, C, 3, 3), x.dtype)
    geom = (th, tw, pads[0], pads[2])
    pooled = _pooled(_conv_flops(P, C, CO))
    if _by_planes(P, C, CO, x.dtype.itemsize):
        return _weight_grad_by_planes(x, gy, P, geom, pooled)
    ranges = _pieces(P, pooled)
    # each range's gU (36, CO, C) in one buffer, so that summing them is part of the last
    # GEMM: gw (CO*C, 9) = [gU_0; gU_1; ...]^T (CO*C, R*36) @ [GG; GG; ...] (R*36, 9)
    gU = np.empty((len(ranges), ALPHA * ALPHA, CO, C), x.dtype)
    run_tasks(
        _weight_grad_range,
        [(x, gy, gU[r], lo, hi, geom) for r, (lo, hi) in enumerate(ranges)],
        pooled,
    )
    return _inverse_weight_transform(gU)


def _inverse_weight_transform(gU):
    """gw (CO, C, 3, 3) = sum over r of G^T gU[r, :, co, c] G for gU (R, 36, CO, C), as one
    GEMM (CO*C, R*36) @ [GG; GG; ...] (R*36, 9)."""
    R, _, CO, C = gU.shape
    GGs = np.ascontiguousarray(np.tile(_matrices(gU.dtype)["GG"], (R, 1)))
    gw = np.empty((CO, C, 3, 3), gU.dtype)
    gU2t = gU.reshape(R * ALPHA * ALPHA, CO * C).T
    pooled = _pooled(2 * ALPHA * ALPHA * R * 9 * CO * C)
    run_tasks(
        _product_piece,
        [(gU2t, GGs, gw.reshape(CO * C, 9), lo, hi, 0) for lo, hi in _pieces(CO * C, pooled)],
        pooled,
    )
    return gw


def _weight_grad_by_planes(x, gy, P, geom, pooled):
    """The weight gradient by planes (few tiles, many channels): V and Mg of every tile,
    then gU[k] = Mg[k]^T V[k] split by plane, so gU is computed once, not once per range."""
    C, CO, dtype = x.shape[1], gy.shape[1], x.dtype
    V = np.empty((ALPHA, ALPHA, P + 1, C), dtype)
    Mg = np.empty((ALPHA, ALPHA, P + 1, CO), dtype)
    ranges = _pieces(P, pooled)
    run_tasks(_grad_inputs_range, [(V, Mg, x, gy, lo, hi, geom) for lo, hi in ranges], pooled)
    V36 = V.reshape(ALPHA * ALPHA, P + 1, C)[:, :P]
    Mgt = Mg.reshape(ALPHA * ALPHA, P + 1, CO)[:, :P].swapaxes(1, 2)
    gU = np.empty((1, ALPHA * ALPHA, CO, C), dtype)
    planes = _pieces(ALPHA * ALPHA, pooled)
    run_tasks(_planes_product, [(Mgt, V36, gU[0], k0, k1) for k0, k1 in planes], pooled)
    return _inverse_weight_transform(gU)


def _grad_inputs_range(V, Mg, x, gy, lo, hi, geom):
    """V's and Mg's tile rows lo..hi-1: the transforms of x's and gy's tiles lo..hi-1."""
    _input_range(V, x, lo, hi, lo, geom)
    _grad_range(Mg, gy, lo, hi, lo, geom)


def _weight_grad_range(x, gy, gU, lo, hi, geom):
    """gU (36, CO, C) = this range's sum over tiles, a block of tiles at a time."""
    C, CO, dtype = x.shape[1], gy.shape[1], x.dtype
    part = None
    for t0, t1 in _sub_blocks(lo, hi, C + CO, dtype.itemsize):
        nb = t1 - t0
        V = _scratch("V", (ALPHA, ALPHA, nb + 1, C), dtype)
        Mg = _scratch("M", (ALPHA, ALPHA, nb + 1, CO), dtype)
        _input_range(V, x, t0, t1, 0, geom)
        _grad_range(Mg, gy, t0, t1, 0, geom)
        V36 = V.reshape(ALPHA * ALPHA, nb + 1, C)[:, :nb]
        Mgt = Mg.reshape(ALPHA * ALPHA, nb + 1, CO)[:, :nb].swapaxes(1, 2)
        if part is None:
            np.matmul(Mgt, V36, out=gU)
            part = _scratch("gU_part", gU.shape, dtype)
        else:
            np.matmul(Mgt, V36, out=part)
            np.add(gU, part, out=gU)


def _sub_blocks(lo, hi, channels, itemsize):
    size = BLOCK_BYTES // (ALPHA * ALPHA * channels * itemsize)
    size = min(MAX_BLOCK, max(MIN_BLOCK, size))
    return [(t0, min(hi, t0 + size)) for t0 in range(lo, hi, size)]
