"""Fused attention gate: scale x by the sigmoid of broadcast logits.

For x (N, C, H, W) and logits l either (N, C, 1, 1) (channel gate) or (N, 1, H, W)
(spatial gate), with j(i) the logit that element i of x broadcasts from:

    s = sigmoid(l) = 1 / (1 + e^-l)                (computed once per logit, saved)
    y[i] = x[i] s[j(i)]

    gx[i] = gy[i] s[j(i)]
    gl[j] = s[j] (1 - s[j]) sum_{i: j(i) = j} gy[i] x[i]

``gl`` is a gather per logit over its M = H W (channel gate) or C (spatial gate) elements,
accumulated in float64: no atomics, the same on both devices. One op instead of PyTorch's
sigmoid + broadcast multiply, whose backward also needs a broadcast reduction.
"""

import math

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function

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
def scale_at(y, x, s, n, c, m, C, M, spatial):
    """y[n, c, m] = x[n, c, m] s[j]; also gx = gy s with (gx, gy) for (y, x)."""
    j = n * M + m if spatial else n * C + c
    i = (n * C + c) * M + m
    y[i] = x[i] * s[j]


@register_jitable
def logit_grad_at(gl, gy, x, s, j, C, M, spatial):
    """gl[j] = s (1 - s) sum over the elements that broadcast from logit j."""
    acc = 0.0
    if spatial:  # j = n M + m: the C elements (n, c, m)
        n, m = j // M, j % M
        for c in range(C):
            i = (n * C + c) * M + m
            acc += gy[i] * x[i]
    else:  # j = n C + c: the contiguous plane (n, c)
        for m in range(M):
            acc += gy[j * M + m] * x[j * M + m]
    one = gl.dtype.type(1)
    gl[j] = s[j] * (one - s[j]) * acc


# CPU copies of the bodies, inlined into the prange loops: as plain calls they cost more
# than the bodies themselves (array arguments on every element). CUDA kernels call the
# register_jitable originals.
sigmoid_at_cpu = njit(inline="always")(sigmoid_at)


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True)
def _sigmoid_cpu(s, logits):
    for j in prange(s.size):
        sigmoid_at_cpu(s, logits, j)


@njit(parallel=True, cache=True)
def _scale_cpu(y, x, s, C, M, spatial):
    # scale_at with the logit index hoisted out of the pixel loop, on 2-D (plane, pixel)
    # views: a row index LLVM can prove non-negative lets the pixel loop vectorise (flat
    # ``base + m`` indexing keeps a wraparound check per element and runs ~4x slower).
    P = y.size // M
    y2, x2 = y.reshape(P, M), x.reshape(P, M)
    if spatial:
        s2 = s.reshape(P // C, M)
        for p in prange(P):
            n = p // C
            for m in range(M):
                y2[p, m] = x2[p, m] * s2[n, m]
    else:
        for p in prange(P):
            sp = s[p]
            for m in range(M):
                y2[p, m] = x2[p, m] * sp


@njit(parallel=True, cache=True, fastmath=True)
def _logit_grad_cpu(gl, gy, x, s, C, M, spatial):
    P = gy.size // M
    gy2, x2 = gy.reshape(P, M), x.reshape(P, M)
    one = gl.dtype.type(1)
    if not spatial:
        for j in prange(P):  # logit_grad_at: the plane's float64 sum of gy x
            acc = 0.0
            for m in range(M):
                acc += gy2[j, m] * x2[j, m]
            gl[j] = s[j] * (one - s[j]) * acc
        return
    # Spatial gate: logit_grad_at's sum over c for a pixel, with channels outer and pixels
    # inner so that reads are contiguous (one sample per task).
    N = gl.size // M
    gl2, s2 = gl.reshape(N, M), s.reshape(N, M)
    for n in prange(N):
        acc = np.zeros(M, dtype=np.float64)
        for c in range(C):
            p = n * C + c
            for m in range(M):
                acc[m] += gy2[p, m] * x2[p, m]
        for m in range(M):
            gl2[n, m] = s2[n, m] * (one - s2[n, m]) * acc[m]


@device.cuda_factory
def _sigmoid_cuda():

    @cuda.jit
    def sigmoid(s, logits):
        for j in range(cuda.grid(1), s.size, cuda.gridsize(1)):
            sigmoid_at(s, logits, j)

    return device.grid_stride_launcher(sigmoid)


@device.cuda_factory
def _scale_cuda():

    @cuda.jit
    def scale(y, x, s, C, M, spatial):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            p = i // M
            scale_at(y, x, s, p // C, p % C, i % M, C, M, spatial)

    return device.grid_stride_launcher(scale)


@device.cuda_factory
def _logit_grad_cuda():

    @cuda.jit
    def logit_grad(gl, gy, x, s, C, M, spatial):
        for j in range(cuda.grid(1), gl.size, cuda.gridsize(1)):
            logit_grad_at(gl, gy, x, s, j, C, M, spatial)

    return device.grid_stride_launcher(logit_grad)


sigmoid_kernel = Kernel(cpu=_sigmoid_cpu, cuda=_sigmoid_cuda)
scale_kernel = Kernel(cpu=_scale_cpu, cuda=_scale_cuda)
# float64_math: the sum over a channel plane or over channels accumulates in float64.
logit_grad_kernel = Kernel(cpu=_logit_grad_cpu, cuda=_logit_grad_cuda, float64_math=True)


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
