"""Fused attention gate: scale x by the sigmoid of broadcast logits.

For x (N, C, H, W) and logits l either (N, C, 1, 1) (channel gate) or (N, 1, H, W)
(spatial gate), with j(i) the logit that element i of x broadcasts from:

    s = sigmoid(l) = 1 / (1 + e^-l)                (computed once per logit, saved)
    y[i] = x[i] s[j(i)]

    gx[i] = gy[i] s[j(i)]
    gl[j] = s[j] (1 - s[j]) sum_{i: j(i) = j} gy[i] x[i]

``gl`` is a gather per logit over its M = H W (channel gate) or C (spatial gate) elements,
accumulated in float64: no atomics, the same on both devices (on CUDA the channel gate's
sum is one block per plane, its threads striding over the plane, combined by the block's
fixed tree, kernels/block_reduce.py). One op instead of PyTorch's
sigmoid + broadcast multiply, whose backward also needs a broadcast reduction.
"""

import math

import numpy as np
from numba import float64, njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.kernels import block_reduce

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


# ----------------------------------------------------------------------------- bodies
@register_jitable
def sigmoid_at(s, logits, j):
    one = s.dtype.type(1)
    v = logits[j]
    if v >= 0:
        s[j] = one / (one + math.exp(-v))
    else:
        e = math.exp(v)
        s[j] = e / (one + e)


@register_jitable
def scale_at(y, x, s, k, j):
    """y[k] = x[k] s[j]: element k times the sigmoid of its logit j (also gx = gy s)."""
    y[k] = x[k] * s[j]


@register_jitable
def logit_grad_at(gl, gy, x, s, j):
    """gl[j] = s[j] (1 - s[j]) sum_k gy[k] x[k], with gy, x 1-D views of the elements that
    broadcast from logit j: a plane (n, c) for the channel gate, the C values of pixel (n, m)
    for the spatial gate (a slice with step M). The sum is in float64.

    The CPU kernel calls this for the channel gate only. For the spatial gate it computes the
    same sums with channels outer and pixels inner (contiguous reads, a row of float64
    accumulators per sample), because a per-pixel gather reads memory M elements apart; it
    adds in the same channel order, and tests/ops/test_shared_bodies.py compares the two."""
    acc = 0.0
    for k in range(gy.size):
        acc += gy[k] * x[k]
    store_logit_grad(gl, j, s[j], acc)


@register_jitable
def store_logit_grad(gl, j, s, acc):
    """gl[j] = s (1 - s) acc: the sigmoid's derivative times the gathered sum."""
    gl[j] = s * (gl.dtype.type(1) - s) * acc


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves. CUDA kernels call the register_jitable originals.
sigmoid_at_cpu = njit(inline="always")(sigmoid_at)
scale_at_cpu = njit(inline="always")(scale_at)
logit_grad_at_cpu = njit(inline="always")(logit_grad_at)
store_logit_grad_cpu = njit(inline="always")(store_logit_grad)


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True)
def _sigmoid_cpu(s, logits):
    for j in prange(s.size):
        sigmoid_at_cpu(s, logits, j)


@njit(parallel=True, cache=True)
def _scale_cpu(y, x, s, C, M, spatial):
    # scale_at on 2-D (plane, pixel) views, one row per task; the logit row (spatial gate)
    # or logit (channel gate) is fixed for the whole row. A row index from 0 lets the pixel
    # loop vectorise (flat ``base + m`` indexing keeps a wraparound check and ran ~4x slower).
    P = y.size // M
    y2, x2 = y.reshape(P, M), x.reshape(P, M)
    if spatial:
        s2 = s.reshape(P // C, M)
        for p in prange(P):
            yp, xp, sn = y2[p], x2[p], s2[p // C]
            for m in range(M):
                scale_at_cpu(yp, xp, sn, m, m)
    else:
        for p in prange(P):
            yp, xp = y2[p], x2[p]
            for m in range(M):
                scale_at_cpu(yp, xp, s, m, p)


@njit(parallel=True, cache=True, fastmath=True)
def _logit_grad_cpu(gl, gy, x, s, C, M, spatial):
    P = gy.size // M
    gy2, x2 = gy.reshape(P, M), x.reshape(P, M)
    if not spatial:
        for j in prange(P):
            logit_grad_at_cpu(gl, gy2[j], x2[j], s, j)
        return
    # Spatial gate: logit_grad_at's per-pixel sums over c, turned inside out (see its
    # docstring): channels outer, pixels inner, one sample per task.
    N = gl.size // M
    gl2, s2 = gl.reshape(N, M), s.reshape(N, M)
    for n in prange(N):
        acc = np.zeros(M, dtype=np.float64)
        for c in range(C):
            p = n * C + c
            for m in range(M):
                acc[m] += gy2[p, m] * x2[p, m]
        gln = gl2[n]
        for m in range(M):
            store_logit_grad_cpu(gln, m, s2[n, m], acc[m])


@device.cuda_factory
def _sigmoid_cuda():

    @cuda.jit
    def sigmoid(s, logits):
        for j in range(cuda.grid(1), s.size, cuda.gridsize(1)):
            sigmoid_at(s, logits, j)

    return device.launcher(sigmoid)


@device.cuda_factory
def _scale_cuda():

    @cuda.jit
    def scale(y, x, s, C, M, spatial):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            p = i // M  # plane n C + c
            j = (p // C) * M + i % M if spatial else p
            scale_at(y, x, s, i, j)

    return device.launcher(scale)


@device.cuda_factory
def _logit_grad_cuda():
    block_sum = block_reduce.block_sum_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def logit_grad(gl, gy, x, s, C, M, spatial):
        if spatial:  # j = n M + m: elements (n, c, m) for c < C, M apart; one thread per
            # logit, neighbouring threads on neighbouring pixels (coalesced)
            for j in range(cuda.grid(1), gl.size, cuda.gridsize(1)):
                lo = (j // M) * C * M + j % M
                hi = lo + C * M
                logit_grad_at(gl, gy[lo:hi:M], x[lo:hi:M], s, j)
            return
        # channel gate, j = n C + c: one block per plane of M contiguous elements, its
        # threads striding over the plane; float64(...) keeps the simulator's sums in float64
        buf = cuda.shared.array(T, np.float64)
        t, step = cuda.threadIdx.x, cuda.blockDim.x
        for j in range(cuda.blockIdx.x, gl.size, cuda.gridDim.x):
            lo = j * M
            acc = 0.0
            for k in range(t, M, step):
                acc += float64(gy[lo + k] * x[lo + k])  # as logit_grad_at: product in x's dtype
            acc = block_sum(buf, acc)
            if t == 0:
                store_logit_grad(gl, j, s[j], acc)

    def blocks(gl, gy, x, s, C, M, spatial):
        # a block per plane (channel gate), or enough blocks for one thread per logit
        return -(-gl.size // block_reduce.GPU_BLOCK) if spatial else gl.size

    return block_reduce.plane_launcher(
        logit_grad, planes=blocks, items=lambda gl, gy, *rest: gy.size
    )


sigmoid_kernel = Kernel(
    cpu=_sigmoid_cpu, cuda=_sigmoid_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)
scale_kernel = Kernel(cpu=_scale_cpu, cuda=_scale_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS)
# float64_math: the sum over a channel plane or over channels accumulates in float64.
logit_grad_kernel = Kernel(
    cpu=_logit_grad_cpu,
    cuda=_logit_grad_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)


# ----------------------------------------------------------------------------- op
class Gate(Function):
    def __init__(self, spatial):
        self.spatial = spatial

    def forward(self, x, logits):
        C, M = x.shape[1], x.shape[2] * x.shape[3]
        dev = device.device_of(x)
        self.C, self.M = C, M
        self.l_shape = logits.shape
        self.s = device.empty((logits.size,), logits.dtype, dev)  # sigmoid(logits), flat
        y = device.empty(x.shape, x.dtype, dev)
        if y.size:
            sigmoid_kernel(self.s, device.flat(logits))
            scale_kernel(device.flat(y), device.flat(x), self.s, C, M, self.spatial)
        self.x = x if self.needs_input_grad[1] else None  # only glogits reads x
        return y

    def backward(self, gy):
        dev = device.device_of(gy)
        gx = gl = None
        if self.needs_input_grad[0]:
            gx = device.empty(gy.shape, gy.dtype, dev)
            if gx.size:
                scale_kernel(device.flat(gx), device.flat(gy), self.s, self.C, self.M, self.spatial)
        if self.needs_input_grad[1]:
            gl = device.empty(self.l_shape, gy.dtype, dev)
            if gl.size:
                logit_grad_kernel(
                    device.flat(gl),
                    device.flat(gy),
                    device.flat(self.x),
                    self.s,
                    self.C,
                    self.M,
                    self.spatial,
                )
        return gx, gl


def gate_layout(x_shape, l_shape):
    """True for a spatial gate (N, 1, H, W), False for a channel gate (N, C, 1, 1)."""
    N, C, H, W = x_shape
    if tuple(l_shape) == (N, C, 1, 1):
        return False
    if tuple(l_shape) == (N, 1, H, W):
        return True
    raise ValueError(
        f"gate: logits must have shape (N, C, 1, 1) = {(N, C, 1, 1)} (channel gate) or "
        f"(N, 1, H, W) = {(N, 1, H, W)} (spatial gate) for x of shape {tuple(x_shape)}, "
        f"got {tuple(l_shape)}"
    )


def gate(x, logits):
    """``x * sigmoid(logits)`` for channel (N, C, 1, 1) or spatial (N, 1, H, W) logits."""
    if x.ndim != 4:
        raise ValueError(f"gate: expected a 4-D input x (N, C, H, W), got shape {x.shape}")
    if x.dtype != logits.dtype or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"gate: expected x and logits of one floating-point dtype, got {x.dtype} and "
            f"{logits.dtype}"
        )
    return Gate(gate_layout(x.shape, logits.shape))(x, logits)
