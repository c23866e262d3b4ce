"""The Adam / AdamW parameter update as one fused, in-place kernel (optim/adam.py's maths).

Per element, at step t, with g the gradient (not differentiable; runs under no_grad):

    g    <- g + wd * p                       (Adam's L2 decay; skipped for AdamW)
    m    <- beta1 * m + (1 - beta1) * g
    v    <- beta2 * v + (1 - beta2) * g * g
    vmax <- max(vmax, v), and v <- vmax      (amsgrad only)
    p    <- p * (1 - lr * wd)                (AdamW's decoupled decay)
    p    <- p - step_size * (m / (sqrt(v) / sqrt(1 - beta2^t) + eps)),  step_size = lr / (1 - beta1^t)

Each line is the same float operation, in the same order, as the tensor-op formula, so in
float64 the results are bit-identical to it (float32 may differ in the last bit: numba's
CPU ``math.sqrt`` of a float32 returns a float64). Fused, a step costs one pass over
memory instead of ~15 ops (and their Python overhead) per parameter.
"""

import math

from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def adam_at(p, g, m, v, vmax, i, c, flags):
    # c: (wd, beta1, 1 - beta1, beta2, 1 - beta2, sqrt(1 - beta2^t), eps, 1 - lr*wd, step_size)
    # flags: (l2 decay, decoupled decay, amsgrad)
    gi = g[i]
    if flags[0]:
        gi = gi + c[0] * p[i]
    m[i] = c[1] * m[i] + c[2] * gi
    v[i] = c[3] * v[i] + c[4] * (gi * gi)
    vi = v[i]
    if flags[2]:
        if vi > vmax[i] or vi != vi:  # noqa: PLR0124  (not max(): NaN propagates, as torch)
            vmax[i] = vi
        vi = vmax[i]
    denom = math.sqrt(vi) / c[5] + c[6]
    pi = p[i]
    if flags[1]:
        pi = pi * c[7]
    p[i] = pi - c[8] * (m[i] / denom)


@njit(parallel=True, cache=True)
def _adam_cpu(p, g, m, v, vmax, c, flags):
    for i in prange(p.size):
        adam_at(p, g, m, v, vmax, i, c, flags)


@device.cuda_factory
def _adam_cuda():

    @cuda.jit
    def adam(p, g, m, v, vmax, c, flags):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            adam_at(p, g, m, v, vmax, i, c, flags)

    return device.launcher(adam)


# serial_small: one call per parameter, most of them (biases, norms, small layers) small
adam_kernel = Kernel(cpu=_adam_cpu, cuda=_adam_cuda, serial_small=True)


def adam_update_(p, g, m, v, vmax, step, lr, betas, eps, weight_decay, decoupled, amsgrad):
    """Update the arrays p, m, v (and vmax) in place; see the module docstring."""
    beta1, beta2 = betas
    dtype = p.dtype.type
    c = (
        dtype(weight_decay),
        dtype(beta1),
        dtype(1 - beta1),
        dtype(beta2),
        dtype(1 - beta2),
        dtype((1 - beta2**step) ** 0.5),
        dtype(eps),
        dtype(1 - lr * weight_decay),
        dtype(lr / (1 - beta1**step)),
    )
    flags = (weight_decay != 0 and not decoupled, weight_decay != 0 and decoupled, amsgrad)
    if p.size:
        flat = device.flat
        with device.updated_in_place(p) as p1:  # p may be a non-contiguous view (p.data = w.T)
            adam_kernel(p1, flat(g), flat(m), flat(v), flat(vmax if amsgrad else v), c, flags)
