"""Variance over dimensions, composed from differentiable ops:

var = sum((x - mean(x))^2) / (K - correction),   correction = 1 (unbiased) by default
"""

from minicbam.ops.reduce import mean, normalize_dims, sum


def var(x, dim=None, unbiased=True, keepdim=False, correction=None):
    dims = normalize_dims(dim, x.ndim, "var")
    K = 1
    for d in dims:
        K *= x.shape[d]
    corr = (1 if unbiased else 0) if correction is None else correction
    d = x - mean(x, dims, keepdim=True)
    denom = K - corr
    scale = 1.0 / denom if denom > 0 else float("inf")
    return sum(d * d, dims, keepdim) * scale
