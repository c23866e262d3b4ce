"""Slow, obvious NumPy references (test oracles) for matmul, linear and conv2d.

Written as plain loops straight from the definitions, sharing no code with minicbam.
"""

import numpy as np


def matmul_2d(a, b):
    """(M, K) @ (K, N) by the definition y[i, j] = sum_k a[i, k] b[k, j]."""
    M, K = a.shape
    N = b.shape[1]
    y = np.zeros((M, N), dtype=np.float64)
    for i in range(M):
        for j in range(N):
            for k in range(K):
                y[i, j] += a[i, k] * b[k, j]
    return y


def matmul(a, b):
    """torch.matmul semantics: 1-D promotion, batch broadcasting, loops over batch entries."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    a3 = np.broadcast_to(a2, batch + a2.shape[-2:])
    b3 = np.broadcast_to(b2, batch + b2.shape[-2:])
    y = np.zeros(batch + (a2.shape[-2], b2.shape[-1]))
    for idx in np.ndindex(*batch):
        y[idx] = matmul_2d(a3[idx], b3[idx])
    if b.ndim == 1:
        y = y[..., 0]
    if a.ndim == 1:
        y = y[..., 0, :] if b.ndim > 1 else y[..., 0]
    return y


def linear(x, w, b=None):
    """y[..., o] = sum_i x[..., i] w[o, i] + b[o]."""
    y = np.zeros(x.shape[:-1] + (w.shape[0],))
    for idx in np.ndindex(*x.shape[:-1]):
        for o in range(w.shape[0]):
            y[idx + (o,)] = sum(x[idx + (i,)] * w[o, i] for i in range(w.shape[1]))
            if b is not None:
                y[idx + (o,)] += b[o]
    return y


def conv2d(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Direct loops over every output element and every kernel tap; pads = (top, bottom,
    left, right); positions in the padding read 0."""
    N, _C, H, W = x.shape
    CO, Cg, KH, KW = w.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dilation
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    COg = CO // groups
    y = np.zeros((N, CO, OH, OW))
    for n, co, oh, ow in np.ndindex(N, CO, OH, OW):
        g = co // COg
        acc = 0.0 if b is None else float(b[co])
        for ci, kh, kw in np.ndindex(Cg, KH, KW):
            h = oh * sh - pt + kh * dh
            v = ow * sw - pl + kw * dw
            if 0 <= h < H and 0 <= v < W:
                acc += x[n, g * Cg + ci, h, v] * w[co, ci, kh, kw]
        y[n, co, oh, ow] = acc
    return y


def conv2d_grad(x, w, gy, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """(gx, gw, gb) for output gradient gy: conv2d's loops, each product's two factors
    receiving the other times gy."""
    _N, _C, H, W = x.shape
    CO, Cg, KH, KW = w.shape
    (sh, sw), (pt, _pb, pl, _pr), (dh, dw) = stride, pads, dilation
    COg = CO // groups
    gx, gw = np.zeros(x.shape), np.zeros(w.shape)
    for n, co, oh, ow in np.ndindex(*gy.shape):
        g = co // COg
        for ci, kh, kw in np.ndindex(Cg, KH, KW):
            h = oh * sh - pt + kh * dh
            v = ow * sw - pl + kw * dw
            if 0 <= h < H and 0 <= v < W:
                gx[n, g * Cg + ci, h, v] += w[co, ci, kh, kw] * gy[n, co, oh, ow]
                gw[co, ci, kh, kw] += x[n, g * Cg + ci, h, v] * gy[n, co, oh, ow]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def conv2d_scipy(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """An independent second oracle: scipy.signal.correlate on the zero-padded input with a
    zero-dilated kernel, subsampled by the stride."""
    from scipy.signal import correlate

    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, pads, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    CO, Cg, KH, KW = w.shape
    wd = np.zeros((CO, Cg, dh * (KH - 1) + 1, dw * (KW - 1) + 1))
    wd[:, :, ::dh, ::dw] = w
    COg = CO // groups
    out = []
    for n in range(x.shape[0]):
        maps = []
        for co in range(CO):
            g = co // COg
            y = correlate(xp[n, g * Cg : (g + 1) * Cg], wd[co], mode="valid")[0]
            maps.append(y[::sh, ::sw] + (0.0 if b is None else b[co]))
        out.append(np.stack(maps))
    return np.stack(out)


def im2col(x, geom):
    """col (N, C*KH*KW, OH*OW) with explicit loops: col[n, (c*KH + kh)*KW + kw, oh*OW + ow]
    is x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw], 0 outside x."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    N, C, H, W = x.shape
    col = np.zeros((N, C * KH * KW, OH * OW), x.dtype)
    for n, c, kh, kw, oh, ow in np.ndindex(N, C, KH, KW, OH, OW):
        h, w = oh * sh - ph + kh * dh, ow * sw - pw + kw * dw
        if 0 <= h < H and 0 <= w < W:
            col[n, (c * KH + kh) * KW + kw, oh * OW + ow] = x[n, c, h, w]
    return col


def col2im(gcol, x_shape, geom):
    """im2col's adjoint in float64: every col entry added back to the input element it
    was read from (entries read from the padding dropped)."""
    KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = geom
    N, C, H, W = x_shape
    gx = np.zeros(x_shape)
    for n, c, kh, kw, oh, ow in np.ndindex(N, C, KH, KW, OH, OW):
        h, w = oh * sh - ph + kh * dh, ow * sw - pw + kw * dw
        if 0 <= h < H and 0 <= w < W:
            gx[n, c, h, w] += gcol[n, (c * KH + kh) * KW + kw, oh * OW + ow]
    return gx
