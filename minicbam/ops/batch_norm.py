"""Batch normalisation over (N, C, *) inputs: per channel c, over the K = N M elements of
its N planes of M = prod(spatial) elements each.

Training (batch statistics, biased variance for normalising):

    mu = sum x / K,   var = sum (x - mu)^2 / K,   invstd = 1 / sqrt(var + eps)
    (var by the corrected two-pass algorithm, sum (x - mu)^2 - (sum (x - mu))^2 / K, which
    cancels the rounding error of mu; eps must be > 0 in training, as in PyTorch)
    x_hat = (x - mu) invstd,   y = w x_hat + b = x scale + shift
    running_mean <- (1 - momentum) running_mean + momentum mu
    running_var  <- (1 - momentum) running_var  + momentum var K / (K - 1)   (unbiased)

Evaluation: the same affine map with mu = running_mean, var = running_var.

Gradients (sums over the K elements of channel c):

    gb = sum gy,   gw = sum gy x_hat
    training: gx = w invstd (gy - sum gy / K - x_hat sum (gy x_hat) / K)
    eval:     gx = w invstd gy

Statistics are gathers, never atomics: each (n, c) plane's mean and M2 = sum (x - mean_plane)^2
are computed by two passes over the plane, in float64 (on the CPU one task per plane; on CUDA
one block per plane, its threads striding over the plane so that neighbouring threads read
neighbouring addresses, the partials combined by the block's fixed tree, block_reduce), then
one thread per channel combines its N planes exactly (Chan et al.):

    mu = mean of the plane means,   M2 = sum M2_plane + M sum (mean_plane - mu)^2

and, in the same thread, updates the running statistics in place and folds mu, invstd, w, b
into the per-channel ``scale, shift`` (x's dtype) of the elementwise pass. The backward pass
has the same plane -> channel -> element structure.
"""

import math

import numpy as np
from numba import float64, int64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function, check_same_device
from minicbam.kernels import block_reduce

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- bodies
# Plane bodies take a 1-D view of one (n, c) plane (the CPU passes a row of a 2-D view, CUDA a
# slice): an index from 0 lets the CPU loop vectorise, where flat ``p * M + m`` indices keep a
# wraparound check per element. Element bodies are scalar: the kernels do the indexing.
@register_jitable
def plane_stats_at(pstats, plane, p, NC):
    """pstats[p] = mean of plane p (of NC), pstats[NC + p] = its sum of squared deviations."""
    M = plane.size
    acc = 0.0
    for m in range(M):
        acc += plane[m]
    mean = acc / M
    m2 = 0.0
    s = 0.0  # sum of deviations: 0 but for the rounding error of mean
    for m in range(M):
        d = plane[m] - mean
        m2 += d * d
        s += d
    store_plane_stats(pstats, p, NC, M, mean, m2, s)


@register_jitable
def store_plane_stats(pstats, p, NC, M, mean, m2, s):
    """pstats[p], pstats[NC + p] from the plane's first-pass mean, its sum of squared
    deviations m2 and its sum of deviations s (0 but for the rounding error of mean)."""
    # the corrected two-pass algorithm: removes the M * err^2 a rounded mean adds to m2
    # (x ~ 1e15 + N(0, 1) in float64 lost 1% of the variance without it)
    pstats[p] = mean + s / M
    pstats[NC + p] = m2 - s * s / M


@register_jitable
def channel_stats_at(stats, affine, pstats, w, b, rmean, rvar, c, C, M, eps, momentum, update):
    """Channel c: stats = (mean, invstd) (float64), affine = (scale, shift); with ``update``,
    the running statistics rmean, rvar in place."""
    N = pstats.size // (2 * C)
    NC = N * C
    mean = 0.0
    for n in range(N):
        mean += pstats[n * C + c]
    mean /= N
    m2 = 0.0
    s = 0.0
    for n in range(N):
        d = pstats[n * C + c] - mean
        m2 += pstats[NC + n * C + c] + M * d * d
        s += d
    mean += s / N  # the same correction as plane_stats_at, for the per-sample means
    m2 -= M * s * s / N
    K = N * M
    invstd = 1.0 / math.sqrt(m2 / K + eps)
    if update:
        rmean[c] = (1.0 - momentum) * rmean[c] + momentum * mean
        rvar[c] = (1.0 - momentum) * rvar[c] + momentum * m2 / (K - 1)
    stats[c], stats[C + c] = mean, invstd
    scale = w[c] * invstd
    affine[c] = scale
    affine[C + c] = b[c] - mean * scale


@register_jitable
def eval_stats_at(stats, affine, w, b, rmean, rvar, c, C, eps):
    """As channel_stats_at, from the running statistics."""
    mean = rmean[c] + 0.0  # float64
    invstd = 1.0 / math.sqrt(rvar[c] + eps)
    stats[c], stats[C + c] = mean, invstd
    scale = w[c] * invstd
    affine[c] = scale
    affine[C + c] = b[c] - mean * scale


@register_jitable
def affine_at(x, scale, shift):
    """y = x scale[c] + shift[c] for one element x of channel c."""
    return x * scale + shift


@register_jitable
def plane_grad_at(psums, gy, x, mean, p, NC):
    """psums[p] = sum gy, psums[NC + p] = sum gy (x - mu) over plane p (1-D views gy, x)."""
    sg, sgx = 0.0, 0.0
    for m in range(gy.size):
        g = gy[m]
        sg += g
        sgx += g * (x[m] - mean)
    psums[p] = sg
    psums[NC + p] = sgx


@register_jitable
def channel_grad_at(gwb, coef, psums, stats, w, c, C, M, training):
    """gwb = (gw, gb); coef = (k, gmean, proj, mean) with gx = k (gy - gmean - (x - mean) proj)."""
    NC = psums.size // 2
    N = NC // C
    sg, sgx = 0.0, 0.0
    for n in range(N):
        sg += psums[n * C + c]
        sgx += psums[NC + n * C + c]
    mean, invstd = stats[c], stats[C + c]
    gwb[c] = sgx * invstd
    gwb[C + c] = sg
    K = N * M
    coef[c] = w[c] * invstd
    coef[C + c] = sg / K if training else 0.0
    coef[2 * C + c] = invstd * invstd * sgx / K if training else 0.0
    coef[3 * C + c] = mean


@register_jitable
def input_grad_at(gy, x, k, gmean, proj, mean):
    """gx for one element (gy, x) of a channel with coefficients (k, gmean, proj, mean)."""
    return k * (gy - gmean - (x - mean) * proj)


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves. CUDA kernels call the register_jitable originals.
plane_stats_at_cpu = njit(inline="always")(plane_stats_at)
channel_stats_at_cpu = njit(inline="always")(channel_stats_at)
eval_stats_at_cpu = njit(inline="always")(eval_stats_at)
affine_at_cpu = njit(inline="always")(affine_at)
plane_grad_at_cpu = njit(inline="always")(plane_grad_at)
channel_grad_at_cpu = njit(inline="always")(channel_grad_at)
input_grad_at_cpu = njit(inline="always")(input_grad_at)


# ----------------------------------------------------------------------------- CPU kernels
# (plane, element) views: P = N C planes of M elements; plane p has channel p % C.
@njit(parallel=True, cache=True, fastmath=True)
def _plane_stats_cpu(pstats, x, M):
    NC = pstats.size // 2
    x2 = x.reshape(NC, M)
    for p in prange(NC):
        plane_stats_at_cpu(pstats, x2[p], p, NC)


@njit(parallel=True, cache=True)
def _channel_stats_cpu(stats, affine, pstats, w, b, rmean, rvar, C, M, eps, momentum, update):
    for c in prange(C):
        channel_stats_at_cpu(
            stats, affine, pstats, w, b, rmean, rvar, int64(c), C, M, eps, momentum, update
        )


@njit(parallel=True, cache=True)
def _eval_stats_cpu(stats, affine, w, b, rmean, rvar, C, eps):
    for c in prange(C):
        eval_stats_at_cpu(stats, affine, w, b, rmean, rvar, int64(c), C, eps)


@njit(parallel=True, cache=True, fastmath=True)
def _affine_cpu(y, x, affine, C, M):
    P = y.size // M
    y2, x2 = y.reshape(P, M), x.reshape(P, M)
    for p in prange(P):
        c = p % C
        scale, shift = affine[c], affine[C + c]  # hoisted: the pixel loop vectorises
        for m in range(M):
            y2[p, m] = affine_at_cpu(x2[p, m], scale, shift)


@njit(parallel=True, cache=True, fastmath=True)
def _plane_grad_cpu(psums, gy, x, stats, C, M):
    NC = psums.size // 2
    gy2, x2 = gy.reshape(NC, M), x.reshape(NC, M)
    for p in prange(NC):
        plane_grad_at_cpu(psums, gy2[p], x2[p], stats[p % C], p, NC)


@njit(parallel=True, cache=True)
def _channel_grad_cpu(gwb, coef, psums, stats, w, C, M, training):
    for c in prange(C):
        channel_grad_at_cpu(gwb, coef, psums, stats, w, int64(c), C, M, training)


@njit(parallel=True, cache=True, fastmath=True)
def _input_grad_cpu(gx, gy, x, coef, C, M):
    P = gx.size // M
    gx2, gy2, x2 = gx.reshape(P, M), gy.reshape(P, M), x.reshape(P, M)
    for p in prange(P):
        c = p % C
        k, gmean, proj, mean = coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c]
        for m in range(M):
            gx2[p, m] = input_grad_at_cpu(gy2[p, m], x2[p, m], k, gmean, proj, mean)


# ----------------------------------------------------------------------------- CUDA kernels
def _planes(psums_or_pstats, *args):
    """Blocks of the plane kernels: one per (n, c) plane."""
    return psums_or_pstats.size // 2


def _elements(psums_or_pstats, gy_or_x, *args):
    """Work items of the plane kernels: the elements they reduce."""
    return gy_or_x.size


@device.cuda_factory
def _plane_stats_cuda():
    block_sum = block_reduce.block_sum_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def plane_stats(pstats, x, M):
        # one block per plane; float64(...) keeps the simulator's sums in float64 as well
        buf = cuda.shared.array(T, np.float64)
        NC = pstats.size // 2
        t, step = cuda.threadIdx.x, cuda.blockDim.x
        for p in range(cuda.blockIdx.x, NC, cuda.gridDim.x):
            lo = p * M
            acc = 0.0
            for m in range(t, M, step):
                acc += float64(x[lo + m])
            mean = block_sum(buf, acc) / M
            m2, s = 0.0, 0.0
            for m in range(t, M, step):
                d = float64(x[lo + m]) - mean
                m2 += d * d
                s += d
            m2 = block_sum(buf, m2)
            s = block_sum(buf, s)
            if t == 0:
                store_plane_stats(pstats, p, NC, M, mean, m2, s)

    return block_reduce.plane_launcher(plane_stats, planes=_planes, items=_elements)


@device.cuda_factory
def _channel_stats_cuda():

    @cuda.jit
    def channel_stats(stats, affine, pstats, w, b, rmean, rvar, C, M, eps, momentum, update):
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            channel_stats_at(
                stats, affine, pstats, w, b, rmean, rvar, c, C, M, eps, momentum, update
            )

    def channels(stats, affine, pstats, w, b, rmean, rvar, C, *rest):
        return C

    return device.launcher(channel_stats, items=channels)


@device.cuda_factory
def _eval_stats_cuda():

    @cuda.jit
    def eval_stats(stats, affine, w, b, rmean, rvar, C, eps):
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            eval_stats_at(stats, affine, w, b, rmean, rvar, c, C, eps)

    def channels(stats, affine, w, b, rmean, rvar, C, eps):
        return C

    return device.launcher(eval_stats, items=channels)


@device.cuda_factory
def _affine_cuda():

    @cuda.jit
    def affine(y, x, affine, C, M):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            c = (i // M) % C
            y[i] = affine_at(x[i], affine[c], affine[C + c])

    return device.launcher(affine)


@device.cuda_factory
def _plane_grad_cuda():
    block_sum = block_reduce.block_sum_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def plane_grad(psums, gy, x, stats, C, M):
        # one block per plane, as plane_stats
        buf = cuda.shared.array(T, np.float64)
        NC = psums.size // 2
        t, step = cuda.threadIdx.x, cuda.blockDim.x
        for p in range(cuda.blockIdx.x, NC, cuda.gridDim.x):
            lo, mean = p * M, stats[p % C]
            sg, sgx = 0.0, 0.0
            for m in range(t, M, step):
                g = float64(gy[lo + m])
                sg += g
                sgx += g * (x[lo + m] - mean)
            sg = block_sum(buf, sg)
            sgx = block_sum(buf, sgx)
            if t == 0:
                psums[p] = sg
                psums[NC + p] = sgx

    return block_reduce.plane_launcher(plane_grad, planes=_planes, items=_elements)


@device.cuda_factory
def _channel_grad_cuda():

    @cuda.jit
    def channel_grad(gwb, coef, psums, stats, w, C, M, training):
        for c in range(cuda.grid(1), C, cuda.gridsize(1)):
            channel_grad_at(gwb, coef, psums, stats, w, c, C, M, training)

    def channels(gwb, coef, psums, stats, w, C, M, training):
        return C

    return device.launcher(channel_grad, items=channels)


@device.cuda_factory
def _input_grad_cuda():

    @cuda.jit
    def input_grad(gx, gy, x, coef, C, M):
        for i in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            c = (i // M) % C
            k, gmean, proj, mean = coef[c], coef[C + c], coef[2 * C + c], coef[3 * C + c]
            gx[i] = input_grad_at(gy[i], x[i], k, gmean, proj, mean)

    return device.launcher(input_grad)


plane_stats_kernel = Kernel(
    cpu=_plane_stats_cpu, cuda=_plane_stats_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
channel_stats_kernel = Kernel(
    cpu=_channel_stats_cpu, cuda=_channel_stats_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
eval_stats_kernel = Kernel(
    cpu=_eval_stats_cpu, cuda=_eval_stats_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
affine_kernel = Kernel(
    cpu=_affine_cpu, cuda=_affine_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
plane_grad_kernel = Kernel(
    cpu=_plane_grad_cpu, cuda=_plane_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
channel_grad_kernel = Kernel(
    cpu=_channel_grad_cpu, cuda=_channel_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
input_grad_kernel = Kernel(
    cpu=_input_grad_cpu, cuda=_input_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


# ----------------------------------------------------------------------------- op
class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps, has_w, has_b):
        self.rmean, self.rvar = running_mean, running_var  # arrays updated in place, or None
        self.training, self.momentum, self.eps = training, momentum, eps
        self.has_w, self.has_b = has_w, has_b

    def _params(self, x, wb):
        """(w, b) as flat arrays of x's dtype: ones and zeros where not given."""
        C, dev = x.shape[1], device.device_of(x)
        wb = list(wb)
        w = device.flat(wb.pop(0)) if self.has_w else device.full((C,), 1, x.dtype, dev)
        b = device.flat(wb.pop(0)) if self.has_b else device.zeros((C,), x.dtype, dev)
        return w, b

    def forward(self, x, *wb):
        N, C = x.shape[:2]
        M = x.size // (N * C) if x.size else 0
        dev = device.device_of(x)
        self.w, b = self._params(x, wb)
        self.x, self.M = x, M
        self.w_shape = wb[0].shape if self.has_w else None
        self.b_shape = wb[-1].shape if self.has_b else None
        self.stats = device.empty((2, C), np.float64, dev)  # (mean, invstd) per channel
        y = device.empty(x.shape, x.dtype, dev)
        if x.size == 0:
            return y
        affine = device.empty((2, C), x.dtype, dev)  # (scale, shift) per channel
        stats, flat = device.flat(self.stats), device.flat
        if self.training:
            pstats = device.empty((2, N * C), np.float64, dev)
            plane_stats_kernel(flat(pstats), flat(x), M)
            update = self.rmean is not None
            rmean, rvar = (flat(self.rmean), flat(self.rvar)) if update else (stats, stats)
            channel_stats_kernel(
                stats,
                flat(affine),
                flat(pstats),
                self.w,
                b,
                rmean,
                rvar,
                C,
                M,
                self.eps,
                self.momentum,
                update,
            )
        else:
            eval_stats_kernel(
                stats, flat(affine), self.w, b, flat(self.rmean), flat(self.rvar), C, self.eps
            )
        self._elementwise(y, x, affine, C, M)
        return y

    def _elementwise(self, y, x, affine, C, M):
        """y = x scale + shift (a subclass fuses an activation here)."""
        affine_kernel(device.flat(y), device.flat(x), device.flat(affine), C, M)

    def backward(self, gy):
        x, M, flat = self.x, self.M, device.flat
        N, C = x.shape[:2]
        dev = device.device_of(gy)
        gx = device.empty(x.shape, gy.dtype, dev)
        gwb = device.zeros((2, C), gy.dtype, dev)  # (gw, gb)
        if x.size:
            psums = device.empty((2, N * C), np.float64, dev)
            coef = device.empty((4, C), gy.dtype, dev)
            self._plane_grad(psums, gy, x, C, M)
            channel_grad_kernel(
                flat(gwb), flat(coef), flat(psums), flat(self.stats), self.w, C, M, self.training
            )
            self._input_grad(gx, gy, x, coef, C, M)
        grads = [gx if self.needs_input_grad[0] else None]
        return self._param_grads(grads, gwb)

    def _param_grads(self, grads, gwb):
        if self.has_w:
            grads.append(gwb[0].reshape(self.w_shape))
        if self.has_b:
            grads.append(gwb[1].reshape(self.b_shape))
        return tuple(grads)

    # the two elementwise passes of backward (a subclass fuses an activation's mask here)
    def _plane_grad(self, psums, gy, x, C, M):
        flat = device.flat
        plane_grad_kernel(flat(psums), flat(gy), flat(x), flat(self.stats), C, M)

    def _input_grad(self, gx, gy, x, coef, C, M):
        flat = device.flat
        input_grad_kernel(flat(gx), flat(gy), flat(x), flat(coef), C, M)


def _check_channels(name, t, C, x_shape):
    if t is not None and t.numel() != C:
        raise ValueError(
            f"batch_norm: {name} should contain {C} elements (the channels of the input of "
            f"shape {tuple(x_shape)}), got shape {tuple(t.shape)}"
        )


def _check_args(x, running_mean, running_var, weight, bias, training):
    if x.ndim < 2:
        raise ValueError(
            f"batch_norm: expected an input of 2 or more dimensions (N, C, ...), got shape "
            f"{tuple(x.shape)}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"batch_norm: expected a floating-point input, got dtype {x.dtype}")
    C = x.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_channels(name, t, C, x.shape)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"batch_norm: {name} has dtype {t.dtype}, expected the input's {x.dtype}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm: running_mean and running_var must be defined in "
            "evaluation mode (training=False)"
        )
    if training and x.numel() // max(C, 1) == 1:
        raise ValueError(
            f"batch_norm: Expected more than 1 value per channel when training, got input "
            f"size {tuple(x.shape)}"
        )


def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """``torch.nn.functional.batch_norm``. In training, running_mean and running_var (tensors
    or None) are updated in place with the batch mean and the UNBIASED batch variance.

    ``momentum`` is a float; for PyTorch's cumulative average (a module's ``momentum=None``)
    pass ``1 / num_batches_tracked``, as ``torch.nn.BatchNorm2d`` does.
    """
    return apply_batch_norm(
        BatchNorm, input, running_mean, running_var, weight, bias, training, momentum, eps
    )


def apply_batch_norm(cls, x, running_mean, running_var, weight, bias, training, momentum, eps):
    """``batch_norm``'s checks, then the Function ``cls`` (BatchNorm or a fused subclass)."""
    _check_args(x, running_mean, running_var, weight, bias, training)
    if training and not float(eps) > 0:  # 1 / sqrt(var + 0) is inf for a constant channel
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if momentum is None:
        raise ValueError(
            "batch_norm: momentum must be a float; for a cumulative average pass "
            "1 / num_batches_tracked"
        )
    check_same_device(
        "batch_norm", [t for t in (x, running_mean, running_var, weight, bias) if t is not None]
    )
    fn = cls(
        None if running_mean is None else running_mean.data,
        None if running_var is None else running_var.data,
        bool(training),
        float(momentum),
        float(eps),
        weight is not None,
        bias is not None,
    )
    return fn(*(t for t in (x, weight, bias) if t is not None))
