"""Slow, obvious NumPy oracles for pooling, batch norm and the fused attention ops.

Plain loops over every output element, written straight from the PyTorch documentation;
no cleverness, so that a disagreement points at the kernels.
"""

import math

import numpy as np


def _out_size(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool2d(x, k, s, p, d, ceil_mode):
    """(y, indices) with the first maximum of each window (scan order kh, kw), or its last
    NaN if it holds one; a window that lies entirely in the padding (possible with dilation)
    gives (-inf, -1)."""
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = k, s, p, d
    N, C, H, W = x.shape
    OH, OW = _out_size(H, KH, SH, PH, DH, ceil_mode), _out_size(W, KW, SW, PW, DW, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        best, best_k = -np.inf, -1
        for kh in range(KH):
            for kw in range(KW):
                ih, iw = oh * SH - PH + kh * DH, ow * SW - PW + kw * DW
                if not (0 <= ih < H and 0 <= iw < W):
                    continue
                v = x[n, c, ih, iw]
                if best_k < 0 or v > best or np.isnan(v):
                    best, best_k = v, ih * W + iw
        y[n, c, oh, ow], idx[n, c, oh, ow] = best, best_k
    return y, idx


def max_pool2d_grad(x_shape, idx, gy):
    """gx: each window's gy added to the element its index names (the first maximum)."""
    N, C, H, W = x_shape
    gx = np.zeros((N, C, H * W))
    for n, c, oh, ow in np.ndindex(*idx.shape):
        if idx[n, c, oh, ow] >= 0:
            gx[n, c, idx[n, c, oh, ow]] += gy[n, c, oh, ow]
    return gx.reshape(x_shape)


def _avg_windows(shape, k, s, p, ceil_mode, count_include_pad, divisor_override):
    """(n, c, oh, ow, rows, cols, divisor) for every avg-pool window, as in avg_pool2d."""
    (KH, KW), (SH, SW), (PH, PW) = k, s, p
    N, C, H, W = shape
    OH, OW = _out_size(H, KH, SH, PH, 1, ceil_mode), _out_size(W, KW, SW, PW, 1, ceil_mode)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        h0, w0 = oh * SH - PH, ow * SW - PW
        h1, w1 = min(h0 + KH, H + PH), min(w0 + KW, W + PW)
        rows, cols = range(max(h0, 0), min(h1, H)), range(max(w0, 0), min(w1, W))
        if divisor_override:
            divisor = divisor_override
        elif count_include_pad:
            divisor = (h1 - h0) * (w1 - w0)
        else:
            divisor = len(rows) * len(cols)
        yield n, c, oh, ow, rows, cols, divisor


def avg_pool2d_grad(x_shape, gy, k, s, p, ceil_mode, count_include_pad, divisor_override):
    """gx: each window's gy / divisor added to every input element of the window."""
    gx = np.zeros(x_shape)
    options = (ceil_mode, count_include_pad, divisor_override)
    for n, c, oh, ow, rows, cols, divisor in _avg_windows(x_shape, k, s, p, *options):
        for ih in rows:
            for iw in cols:
                gx[n, c, ih, iw] += gy[n, c, oh, ow] / divisor
    return gx


def avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, divisor_override):
    (KH, KW), (SH, SW), (PH, PW) = k, s, p
    N, C, H, W = x.shape
    OH, OW = _out_size(H, KH, SH, PH, 1, ceil_mode), _out_size(W, KW, SW, PW, 1, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        h0, w0 = oh * SH - PH, ow * SW - PW
        h1, w1 = min(h0 + KH, H + PH), min(w0 + KW, W + PW)
        window = x[n, c, max(h0, 0) : min(h1, H), max(w0, 0) : min(w1, W)]
        if divisor_override:
            divisor = divisor_override
        elif count_include_pad:
            divisor = (h1 - h0) * (w1 - w0)
        else:
            divisor = window.size
        y[n, c, oh, ow] = window.astype(np.float64).sum() / divisor
    return y


def _adaptive_windows(size, out):
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool2d(x, out):
    N, C, H, W = x.shape
    rows, cols = _adaptive_windows(H, out[0]), _adaptive_windows(W, out[1])
    y = np.empty((N, C) + tuple(out), x.dtype)
    for (oh, (h0, h1)), (ow, (w0, w1)) in (
        (a, b) for a in enumerate(rows) for b in enumerate(cols)
    ):
        y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_grad(x_shape, out, gy):
    """gx of adaptive_avg_pool2d: each window's gy / area added to every element it holds."""
    H, W = x_shape[2:]
    rows, cols = _adaptive_windows(H, out[0]), _adaptive_windows(W, out[1])
    gx = np.zeros(x_shape)
    for (oh, (h0, h1)), (ow, (w0, w1)) in (
        (a, b) for a in enumerate(rows) for b in enumerate(cols)
    ):
        area = (h1 - h0) * (w1 - w0)
        gx[:, :, h0:h1, w0:w1] += gy[:, :, oh, ow][:, :, None, None].astype(np.float64) / area
    return gx


def adaptive_max_pool2d(x, out):
    N, C, H, W = x.shape
    rows, cols = _adaptive_windows(H, out[0]), _adaptive_windows(W, out[1])
    y = np.empty((N, C) + tuple(out), x.dtype)
    idx = np.empty((N, C) + tuple(out), np.int64)
    for n, c in np.ndindex(N, C):
        for (oh, (h0, h1)), (ow, (w0, w1)) in (
            (a, b) for a in enumerate(rows) for b in enumerate(cols)
        ):
            window = x[n, c, h0:h1, w0:w1]
            kh, kw = np.unravel_index(int(np.argmax(window)), window.shape)
            y[n, c, oh, ow] = window[kh, kw]
            idx[n, c, oh, ow] = (h0 + kh) * W + w0 + kw
    return y, idx


def channel_pool(x):
    """(y (N, 2, H, W) = [mean over C, max over C], argmax over C (N, H, W))."""
    mean = x.astype(np.float64).mean(axis=1)
    return np.stack([mean.astype(x.dtype), x.max(axis=1)], axis=1), x.argmax(axis=1)


def channel_pool_grad(x, gy):
    """gx for gy (N, 2, H, W): gy_mean / C to every channel, gy_max to the first argmax."""
    N, C, H, W = x.shape
    gx = np.zeros(x.shape)
    for n, h, w in np.ndindex(N, H, W):
        gx[n, :, h, w] = gy[n, 0, h, w] / C
        gx[n, int(np.argmax(x[n, :, h, w])), h, w] += gy[n, 1, h, w]
    return gx


def global_pool_grad(x, gy, pool_types):
    """gx for gy (P, N, C): the avg slot's gy / (H W) everywhere, the max slot's gy to the
    first maximum of the plane (row-major scan)."""
    N, C, H, W = x.shape
    gx = np.zeros((N, C, H * W))
    for slot, kind in enumerate(pool_types):
        for n, c in np.ndindex(N, C):
            if kind == "avg":
                gx[n, c] += gy[slot, n, c] / (H * W)
            else:
                gx[n, c, int(np.argmax(x[n, c].ravel()))] += gy[slot, n, c]
    return gx.reshape(x.shape)


def global_pool(x, pool_types):
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    pools = {"avg": flat.astype(np.float64).mean(axis=2).astype(x.dtype), "max": flat.max(axis=2)}
    return np.stack([pools[t] for t in pool_types])


def gate(x, logits):
    return x * (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(x.dtype)


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """(y, new running_mean, new running_var) in float64, per channel with explicit loops."""
    x = x.astype(np.float64)
    C = x.shape[1]
    y = np.empty_like(x)
    rm = None if running_mean is None else running_mean.astype(np.float64).copy()
    rv = None if running_var is None else running_var.astype(np.float64).copy()
    for c in range(C):
        values = x[:, c].ravel()
        if training:
            mean = sum(values) / values.size
            var = sum((v - mean) ** 2 for v in values) / values.size
            if rm is not None:
                rm[c] = (1 - momentum) * rm[c] + momentum * mean
                rv[c] = (1 - momentum) * rv[c] + momentum * var * values.size / (values.size - 1)
        else:
            mean, var = rm[c], rv[c]
        w = 1.0 if weight is None else weight[c]
        b = 0.0 if bias is None else bias[c]
        y[:, c] = (x[:, c] - mean) / math.sqrt(var + eps) * w + b
    return y, rm, rv


def squeeze_excite(x, w1, b1, w2, b2):
    """(y, s): Squeeze-and-Excitation with explicit loops over samples and units, float64."""
    x64 = x.astype(np.float64)
    N, C = x.shape[:2]
    K = w1.shape[0]
    s = np.empty((N, C))
    for n in range(N):
        z = [x64[n, c].mean() for c in range(C)]
        h = [max(0.0, b1[k] + sum(w1[k, c] * z[c] for c in range(C))) for k in range(K)]
        for c in range(C):
            logit = b2[c] + sum(w2[c, k] * h[k] for k in range(K))
            s[n, c] = 1.0 / (1.0 + np.exp(-logit))
    y = x64 * s[:, :, None, None]
    return y.astype(x.dtype), s.astype(x.dtype)
