"""The SGD parameter update (momentum, dampening, Nesterov, L2 decay) as one fused, in-place
kernel (optim/sgd.py's maths).

Per element, at step t, with g the gradient (not differentiable; runs under no_grad):

    g  <- g + wd * p                              (if weight_decay != 0)
    b  <- g                                       (first step with momentum: no dampening)
    b  <- momentum * b + (1 - dampening) * g      (later steps)
    d  <- g + momentum * b   (Nesterov)   or   b   (or g without momentum)
    p  <- p - lr * d

Each line is the same float operation, in the same order, as the tensor-op formula, so the
results are bit-identical to it. Fused, a step is one pass over p, g and b instead of 3-6
tensor ops per parameter: a ResNet18-CBAM step ran 354 scalar multiplies, 118 adds and 118
subtractions through the op machinery (~25 ms of a ~1 s step, benchmarks/profile_step.py).
"""

from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


@register_jitable
def sgd_at(p, g, b, i, c, flags):
    # c: (wd, momentum, 1 - dampening, lr); flags: (l2 decay, momentum, first step, nesterov)
    gi = g[i]
    if flags[0]:
        gi = gi + c[0] * p[i]
    d = gi
    if flags[1]:
        if flags[2]:
            b[i] = gi
        else:
            b[i] = c[1] * b[i] + c[2] * gi
        d = gi + c[1] * b[i] if flags[3] else b[i]
    p[i] = p[i] - c[3] * d


@njit(parallel=True, cache=True)
def _sgd_cpu(p, g, b, c, flags):
    for i in prange(p.size):
        sgd_at(p, g, b, i, c, flags)


@device.cuda_factory
def _sgd_cuda():

    @cuda.jit
    def sgd(p, g, b, c, flags):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            sgd_at(p, g, b, i, c, flags)

    return device.launcher(sgd)


# serial_small: one call per parameter, most of them (biases, norms, small layers) small
sgd_kernel = Kernel(cpu=_sgd_cpu, cuda=_sgd_cuda, serial_small=True)


def sgd_update_(p, g, buf, first, lr, momentum, dampening, weight_decay, nesterov):
    """Update the arrays p (and the momentum buffer ``buf``) in place; see the module
    docstring. ``buf`` is None without momentum; ``first``: its first step."""
    dtype = p.dtype.type
    c = (dtype(weight_decay), dtype(momentum), dtype(1 - dampening), dtype(lr))
    flags = (weight_decay != 0, momentum != 0, bool(first), bool(nesterov))
    if p.size:
        flat = device.flat
        with device.updated_in_place(p) as p1:  # p may be a non-contiguous view (p.data = w.T)
            sgd_kernel(p1, flat(g), p1 if buf is None else flat(buf), c, flags)
