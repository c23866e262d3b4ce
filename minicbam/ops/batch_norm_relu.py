"""BatchNorm followed by ReLU as one op: y = relu(BN(x)), the pair every ResNet block and
stem applies, in one pass over the data each way where the unfused pair takes two.

Forward, with BN's per-channel (scale, shift) (ops/batch_norm.py: batch or running
statistics, the running ones updated exactly as batch_norm does):

    y = relu(x scale + shift)                     (one elementwise pass, writes only y)

Backward, with the ReLU's mask taken from the saved output (y > 0 exactly where the
pre-activation is > 0; relu'(0) = 0, and a NaN pre-activation is NaN in y and passes gy,
as PyTorch's threshold_backward):

    g  = gy [not y <= 0]
    gx = BN's input gradient of g,   gw = sum g x_hat,   gb = sum g

BN's gradient reads g twice (the per-plane sums, then the elementwise input gradient); the
mask is applied on the fly in both passes, so g is never stored. The pre-activation BN(x) is
never stored either: only x (BN needs it) and y (the mask) are saved.

This is an internal op (nn.BatchNorm2d's ``forward_relu``, used by the ResNet blocks), not
a public functional: the intermediate BN(x) is not exposed, so nothing else can observe it.

Both devices run the same scalar bodies (affine_relu_at, masked_at and batch_norm.py's
input_grad_at); CUDA's per-plane sums are batch_norm.py's block reduction with the mask.
"""

import numpy as np
from numba import float64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.kernels import block_reduce
from minicbam.ops.batch_norm import (
    BatchNorm,
    _elements,
    _planes,
    apply_batch_norm,
    input_grad_at,
)

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

# fastmath without "nnan"/"ninf": the ReLU's comparison must see NaN as PyTorch's does
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


# ----------------------------------------------------------------------------- bodies
@register_jitable
def affine_relu_at(x, scale, shift, zero):
    """relu(x scale + shift) for one element of a channel; ``zero`` is typed as x."""
    v = x * scale + shift
    return zero if v <= zero else v  # noqa: FURB136 (not max: relu(NaN) is NaN)


@register_jitable
def masked_at(gy, y, zero):
    """ReLU's gradient from its output: gy where y > 0 (or y is NaN), else 0."""
    return zero if y <= zero else gy


affine_relu_at_cpu = njit(inline="always")(affine_relu_at)
masked_at_cpu = njit(inline="always")(masked_at)
input_grad_at_cpu = njit(inline="always")(input_grad_at)


# ----------------------------------------------------------------------------- CPU kernels
# (plane, element) views, as batch_norm.py's: P = N C planes of M elements, plane p has
# channel p % C.
@njit(parallel=True, cache=True, fastmath=_FAST)
def _affine_relu_cpu(y, x, affine, C, M, zero):
    P = y.size // M
    y2, x2 = y.reshape(P, M), x.reshape(P, M)
    for p in prange(P):
        c = p % C
        scale, shift = affine[c], affine[C + c]
        for m in range(M):
            y2[p, m] = affine_relu_at_cpu(x2[p, m], scale, shift, zero)


@njit(parallel=True, cache=True, fastmath=_FAST)
def _plane_grad_relu_cpu(psums, gy, y, x, stats, C, M, zero):
    """psums[p] = sum g, psums[NC + p] = sum g (x - mean) over plane p, g = masked gy."""
    NC = psums.size // 2
    gy2, y2, x2 = gy.reshape(NC, M), y.reshape(NC, M), x.reshape(NC, M)
    for p in prange(NC):
        mean = stats[p % C]
        sg, sgx = 0.0, 0.0
        for m in range(M):
            g = float64(masked_at_cpu(gy2[p, m], y2[p, m], zero))
            sg += g
            sgx += g * (x2[p, m] - mean)
        psums[p] = sg
        psums[NC + p] = sgx


@njit(parallel=True, cache=True, fastmath=_FAST)
def _input_grad_relu_cpu(gx, gy, y, x, coef, C, M, zero):
    P = gx.size // M
    gx2, gy2, y2, x2 = gx.reshape(P, M), gy.reshape(P, M), y.reshape(P, M), x.reshape(P, M)
    for p in prange(P):
        c = p % C
        k, gmean, proj, mean = coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c]
        for m in range(M):
            g = masked_at_cpu(gy2[p, m], y2[p, m], zero)
            gx2[p, m] = input_grad_at_cpu(g, x2[p, m], k, gmean, proj, mean)


# ----------------------------------------------------------------------------- CUDA kernels
@device.cuda_factory
def _affine_relu_cuda():

    @cuda.jit
    def affine_relu(y, x, affine, C, M, zero):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            c = (i // M) % C
            y[i] = affine_relu_at(x[i], affine[c], affine[C + c], zero)

    return device.launcher(affine_relu)


@device.cuda_factory
def _plane_grad_relu_cuda():
    block_sum = block_reduce.block_sum_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def plane_grad_relu(psums, gy, y, x, stats, C, M, zero):
        # one block per plane, as batch_norm.py's plane_grad
        buf = cuda.shared.array(T, np.float64)
        NC = psums.size // 2
        t, step = cuda.threadIdx.x, cuda.blockDim.x
        for p in range(cuda.blockIdx.x, NC, cuda.gridDim.x):
            lo, mean = p * M, stats[p % C]
            sg, sgx = 0.0, 0.0
            for m in range(t, M, step):
                g = float64(masked_at(gy[lo + m], y[lo + m], zero))
                sg += g
                sgx += g * (x[lo + m] - mean)
            sg = block_sum(buf, sg)
            sgx = block_sum(buf, sgx)
            if t == 0:
                psums[p] = sg
                psums[NC + p] = sgx

    return block_reduce.plane_launcher(plane_grad_relu, planes=_planes, items=_elements)


@device.cuda_factory
def _input_grad_relu_cuda():

    @cuda.jit
    def input_grad_relu(gx, gy, y, x, coef, C, M, zero):
        for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            c = (i // M) % C
            k, gmean, proj, mean = coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c]
            g = masked_at(gy[i], y[i], zero)
            gx[i] = input_grad_at(g, x[i], k, gmean, proj, mean)

    return device.launcher(input_grad_relu)


affine_relu_kernel = Kernel(
    cpu=_affine_relu_cpu, cuda=_affine_relu_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
plane_grad_relu_kernel = Kernel(
    cpu=_plane_grad_relu_cpu, cuda=_plane_grad_relu_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
input_grad_relu_kernel = Kernel(
    cpu=_input_grad_relu_cpu, cuda=_input_grad_relu_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


# ----------------------------------------------------------------------------- op
class BatchNormReLU(BatchNorm):
    """BatchNorm with the ReLU fused into its elementwise passes (see the module docstring)."""

    def _elementwise(self, y, x, affine, C, M):
        flat = device.flat
        affine_relu_kernel(flat(y), flat(x), flat(affine), C, M, x.dtype.type(0))
        self.y = y  # the mask of backward

    def _plane_grad(self, psums, gy, x, C, M):
        flat = device.flat
        plane_grad_relu_kernel(
            flat(psums), flat(gy), flat(self.y), flat(x), flat(self.stats), C, M, gy.dtype.type(0)
        )

    def _input_grad(self, gx, gy, x, coef, C, M):
        flat = device.flat
        input_grad_relu_kernel(
            flat(gx), flat(gy), flat(self.y), flat(x), flat(coef), C, M, gy.dtype.type(0)
        )


def batch_norm_relu(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """``relu(batch_norm(input, ...))`` in one op (internal; arguments as ``batch_norm``'s)."""
    return apply_batch_norm(
        BatchNormReLU, input, running_mean, running_var, weight, bias, training, momentum, eps
    )
