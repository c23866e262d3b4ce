"""Fused Squeeze-and-Excitation: squeeze, excitation MLP, sigmoid and scale in one op.

For x (N, C, H, W), M = H W, W1 (K, C), b1 (K,), W2 (C, K), b2 (C,) (K hidden units):

    z[n, c] = sum_m x[n, c, m] / M                          squeeze (float64 sum)
    a[n, k] = b1[k] + sum_c W1[k, c] z[n, c],   h = relu(a)
    l[n, c] = b2[c] + sum_k W2[c, k] h[n, k],   s = sigmoid(l)
    y[n, c, m] = x[n, c, m] s[n, c]                         scale

Gradients, for gy = dL/dy:

    gl[n, c]  = s (1 - s) sum_m gy[n, c, m] x[n, c, m]
    gW2[c, k] = sum_n gl[n, c] h[n, k]              gb2[c] = sum_n gl[n, c]
    ga[n, k]  = [a[n, k] > 0] sum_c gl[n, c] W2[c, k]
    gW1[k, c] = sum_n ga[n, k] z[n, c]              gb1[k] = sum_n ga[n, k]
    gz[n, c]  = sum_k ga[n, k] W1[k, c]
    gx[n, c, m] = gy[n, c, m] s[n, c] + gz[n, c] / M

Work is per sample: its (C, M) block is pooled, the tiny MLP runs on its C means, and the
block is scaled while it is still in cache. The weight gradients are a gather over samples
of the saved (N, C) / (N, K) rows, no atomics. Sums accumulate in float64.

Bytes per pass (B = N C M * itemsize; 16 MiB for (64, 64, 32, 32) float32). A sample's block
is C M * itemsize (256 KiB there; 512 KiB for gy and x together), well inside one core's L2,
so the second touch of a block inside a task is served from cache:

    forward   read x (the pool), read x again from cache, write y        2 B from memory
    backward  read gy and x (the dots), read gy again from cache,
              write gx = gy s + gz / M (both shares in one write)         3 B from memory

A write to memory that is not in cache first reads its line (write-allocate), as a plain copy
does too: a copy of B bytes moves 2 B by this count, so the forward costs about one copy of x
and the backward about 1.5. No other array the size of x is allocated or touched (the (N, C)
and (N, K) rows are a few KiB). The leaf keeps gx as its ``.grad`` without a copy
(``fresh_input_grads``). benchmarks/README.md ("Memory-bound rows") gives the commands that
compare these bytes with the machine's copy bandwidth.
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
def plane_sum(plane):
    acc = 0.0
    for k in range(plane.size):
        acc += plane[k]
    return acc


@register_jitable
def plane_dot(a, b):
    acc = 0.0
    for k in range(a.size):
        acc += a[k] * b[k]
    return acc


@register_jitable
def hidden_at(h, z, w1, b1, n, k):
    """h[n, k] = relu(b1[k] + W1[k] . z[n])."""
    acc = 0.0 + b1[k]
    for c in range(z.shape[1]):
        acc += w1[k, c] * z[n, c]
    h[n, k] = 0.0 if acc <= 0.0 else acc  # a comparison, not max(): NaN stays NaN, as in relu


@register_jitable
def excite_at(s, h, w2, b2, n, c):
    """s[n, c] = sigmoid(b2[c] + W2[c] . h[n]), without overflow for large |l|."""
    acc = 0.0 + b2[c]
    for k in range(h.shape[1]):
        acc += w2[c, k] * h[n, k]
    if acc >= 0:
        s[n, c] = 1.0 / (1.0 + math.exp(-acc))
    else:
        e = math.exp(acc)
        s[n, c] = e / (1.0 + e)


@register_jitable
def logit_grad_at(gl, s, dot, n, c):
    """gl[n, c] = s (1 - s) (gy . x over the plane)."""
    sv = 0.0 + s[n, c]
    gl[n, c] = sv * (1.0 - sv) * dot


@register_jitable
def hidden_grad_at(ga, gl, w2, h, n, k):
    """ga[n, k] = [h > 0] gl[n] . W2[:, k] (h = relu(a) > 0 exactly where a > 0)."""
    acc = 0.0
    if h[n, k] > 0:
        for c in range(gl.shape[1]):
            acc += gl[n, c] * w2[c, k]
    ga[n, k] = acc


@register_jitable
def squeeze_grad_at(gz, ga, w1, n, c, M):
    """gz[n, c] = (ga[n] . W1[:, c]) / M: the squeeze's share of gx, per element."""
    acc = 0.0
    for k in range(ga.shape[1]):
        acc += ga[n, k] * w1[k, c]
    gz[n, c] = acc / M


@register_jitable
def weight_grad_at(gw1, gb1, gw2, gb2, gl, ga, z, h, i):
    """Entry i of the concatenation [gW1 (K, C), gb1 (K), gW2 (C, K), gb2 (C)]."""
    N, C = gl.shape
    K = ga.shape[1]
    acc = 0.0
    if i < K * C:
        k, c = i // C, i % C
        for n in range(N):
            acc += ga[n, k] * z[n, c]
        gw1[k, c] = acc
    elif i < K * C + K:
        k = i - K * C
        for n in range(N):
            acc += ga[n, k]
        gb1[k] = acc
    elif i < 2 * K * C + K:
        j = i - K * C - K
        c, k = j // K, j % K
        for n in range(N):
            acc += gl[n, c] * h[n, k]
        gw2[c, k] = acc
    else:
        c = i - 2 * K * C - K
        for n in range(N):
            acc += gl[n, c]
        gb2[c] = acc


# The CPU kernels inline their copies of the bodies (plain calls cost more than the work).
plane_sum_cpu = njit(inline="always")(plane_sum)
plane_dot_cpu = njit(inline="always")(plane_dot)
hidden_at_cpu = njit(inline="always")(hidden_at)
excite_at_cpu = njit(inline="always")(excite_at)
logit_grad_at_cpu = njit(inline="always")(logit_grad_at)
hidden_grad_at_cpu = njit(inline="always")(hidden_grad_at)
squeeze_grad_at_cpu = njit(inline="always")(squeeze_grad_at)
weight_grad_at_cpu = njit(inline="always")(weight_grad_at)


# ----------------------------------------------------------------------------- CPU kernels
# x3, y3, gy3, gx3 are (N, C, M) views: 1-D plane views indexed from 0 let the plane loops
# vectorise (flat ``base + m`` indexing keeps a wraparound check per element). FAST lets the
# plane sums vectorise, in an order fixed by the compiled code; without nnan / ninf, NaN and
# inf keep their meaning. error_model "numpy": no zero-division branch in the loops
# (1 + e^-l is never 0).
FAST = {"reassoc", "nsz"}


# Tasks: with many samples (``by_plane`` False) one task is a sample, pooled, excited and
# scaled while its (C, M) block is still in cache. With few samples (N < PLANE_TASKS_BELOW)
# samples would split unevenly over the threads (batch 1: one thread idle), so the planes
# (n, c) are the tasks of two parallel loops and the tiny MLP runs between them. The rule
# looks at the shape only, not at the thread count, so a given shape always gives the same
# bits (the two layouts' compiled plane sums may differ in the last bit).
@njit(inline="always")
def _pool_plane(z, x3, n, c):
    z[n, c] = plane_sum_cpu(x3[n, c]) / x3.shape[2]


@njit(inline="always")
def _scale_plane(y3, x3, s, n, c):
    sc = s[n, c]
    yp, xp = y3[n, c], x3[n, c]
    for m in range(xp.size):
        yp[m] = xp[m] * sc


@njit(inline="always")
def _excite_sample(s, h, z, w1, b1, w2, b2, n):
    for k in range(h.shape[1]):
        hidden_at_cpu(h, z, w1, b1, n, k)
    for c in range(s.shape[1]):
        excite_at_cpu(s, h, w2, b2, n, c)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _se_forward_cpu(y3, s, h, z, x3, w1, b1, w2, b2, by_plane):
    N, C = x3.shape[:2]
    if by_plane:
        for p in prange(N * C):
            _pool_plane(z, x3, p // C, p % C)
        for n in range(N):
            _excite_sample(s, h, z, w1, b1, w2, b2, n)
        for p in prange(N * C):
            _scale_plane(y3, x3, s, p // C, p % C)
        return
    for n in prange(N):
        for c in range(C):
            _pool_plane(z, x3, n, c)
        _excite_sample(s, h, z, w1, b1, w2, b2, n)
        for c in range(C):
            _scale_plane(y3, x3, s, n, c)


@njit(inline="always")
def _logit_grad_plane(gl, gy3, x3, s, n, c):
    logit_grad_at_cpu(gl, s, plane_dot_cpu(gy3[n, c], x3[n, c]), n, c)


@njit(inline="always")
def _input_grad_plane(gx3, gy3, s, gz, n, c):
    """gx = gy s + gz: the scale's and the squeeze's shares in one write."""
    sc, g0 = s[n, c], gz[n, c]
    gxp, gyp = gx3[n, c], gy3[n, c]
    for m in range(gxp.size):
        gxp[m] = gyp[m] * sc + g0


@njit(inline="always")
def _squeeze_grad_sample(ga, gz, gl, w1, w2, h, n, M):
    for k in range(h.shape[1]):
        hidden_grad_at_cpu(ga, gl, w2, h, n, k)
    for c in range(gz.shape[1]):
        squeeze_grad_at_cpu(gz, ga, w1, n, c, M)


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _se_backward_cpu(gx3, gl, ga, gz, gy3, x3, s, h, w1, w2, by_plane):
    N, C, M = x3.shape
    if by_plane:
        for p in prange(N * C):
            _logit_grad_plane(gl, gy3, x3, s, p // C, p % C)
        for n in range(N):
            _squeeze_grad_sample(ga, gz, gl, w1, w2, h, n, M)
        for p in prange(N * C):
            _input_grad_plane(gx3, gy3, s, gz, p // C, p % C)
        return
    for n in prange(N):
        for c in range(C):
            _logit_grad_plane(gl, gy3, x3, s, n, c)
        _squeeze_grad_sample(ga, gz, gl, w1, w2, h, n, M)
        for c in range(C):
            _input_grad_plane(gx3, gy3, s, gz, n, c)


@njit(cache=True)
def _se_weight_grad_cpu(gw1, gb1, gw2, gb2, gl, ga, z, h):
    K, C = gw1.shape
    for i in range(2 * K * C + K + C):
        weight_grad_at_cpu(gw1, gb1, gw2, gb2, gl, ga, z, h, i)


# ----------------------------------------------------------------------------- CUDA kernels
# One block per sample (grid-stride over samples): the block's threads pool the C planes,
# run the MLP's K then C units, then scale the sample's C M elements, with a barrier
# between the stages. Every thread of a block runs the same sample loop, so the barriers
# are uniform.
@device.cuda_factory
def _se_forward_cuda():

    @cuda.jit
    def se_forward(y3, s, h, z, x3, w1, b1, w2, b2, by_plane):  # by_plane: CPU only
        N, C, M = x3.shape
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        for n in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            for c in range(t, C, nt):
                z[n, c] = plane_sum(x3[n, c]) / M
            cuda.syncthreads()
            for k in range(t, h.shape[1], nt):
                hidden_at(h, z, w1, b1, n, k)
            cuda.syncthreads()
            for c in range(t, C, nt):
                excite_at(s, h, w2, b2, n, c)
            cuda.syncthreads()
            for i in range(t, C * M, nt):
                c, m = i // M, i % M
                y3[n, c, m] = x3[n, c, m] * s[n, c]
            cuda.syncthreads()

    return device.launcher(se_forward, config=_per_sample_config)


@device.cuda_factory
def _se_backward_cuda():

    @cuda.jit
    def se_backward(gx3, gl, ga, gz, gy3, x3, s, h, w1, w2, by_plane):  # CPU only
        N, C, M = x3.shape
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        for n in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            for c in range(t, C, nt):
                logit_grad_at(gl, s, plane_dot(gy3[n, c], x3[n, c]), n, c)
            cuda.syncthreads()
            for k in range(t, h.shape[1], nt):
                hidden_grad_at(ga, gl, w2, h, n, k)
            cuda.syncthreads()
            for c in range(t, C, nt):
                squeeze_grad_at(gz, ga, w1, n, c, M)
            cuda.syncthreads()
            for i in range(t, C * M, nt):
                c, m = i // M, i % M
                gx3[n, c, m] = gy3[n, c, m] * s[n, c] + gz[n, c]
            cuda.syncthreads()

    return device.launcher(se_backward, config=_per_sample_config)


def _per_sample_config(out, *args):
    if device.cuda_backend() == "sim":
        return device.SIM_MAX_BLOCKS, device.SIM_THREADS_PER_BLOCK
    return max(1, min(out.shape[0], device.MAX_BLOCKS)), device.THREADS_PER_BLOCK


@device.cuda_factory
def _se_weight_grad_cuda():

    @cuda.jit
    def se_weight_grad(gw1, gb1, gw2, gb2, gl, ga, z, h):
        K, C = gw1.shape
        for i in range(cuda.grid(1), 2 * K * C + K + C, cuda.gridsize(1)):
            weight_grad_at(gw1, gb1, gw2, gb2, gl, ga, z, h, i)

    items = lambda gw1, *rest: 2 * gw1.size + gw1.shape[0] + gw1.shape[1]
    return device.launcher(se_weight_grad, items=items)


# float64_math: plane sums and the MLP's dot products accumulate in float64.
se_forward_kernel = Kernel(cpu=_se_forward_cpu, cuda=_se_forward_cuda, float64_math=True)
se_backward_kernel = Kernel(cpu=_se_backward_cpu, cuda=_se_backward_cuda, float64_math=True)
se_weight_grad_kernel = Kernel(
    cpu=_se_weight_grad_cpu, cuda=_se_weight_grad_cuda, float64_math=True
)


# ----------------------------------------------------------------------------- op
PLANE_TASKS_BELOW = 8  # samples under which the CPU kernels' tasks are planes (n, c)


def plane_tasks(N):
    """True when the CPU kernels split the work by planes (n, c) rather than by samples."""
    return N < PLANE_TASKS_BELOW


class SqueezeExcite(Function):
    fresh_input_grads = True  # backward's five arrays are new and returned once each

    def forward(self, x, w1, b1, w2, b2):
        N, C, H, W = x.shape
        K = w1.shape[0]
        dev = device.device_of(x)
        self.s = device.empty((N, C), x.dtype, dev)  # the channel weights, kept
        self.h = device.empty((N, K), x.dtype, dev)
        self.z = device.empty((N, C), x.dtype, dev)
        y = device.empty(x.shape, x.dtype, dev)
        if y.size:
            x3, y3 = x.reshape(N, C, H * W), y.reshape(N, C, H * W)
            by_plane = plane_tasks(N)
            se_forward_kernel(y3, self.s, self.h, self.z, x3, w1, b1, w2, b2, by_plane)
        self.x, self.w1, self.w2 = x, w1, w2
        return y

    def backward(self, gy):
        x = self.x
        N, C, H, W = x.shape
        K = self.w1.shape[0]
        dev = device.device_of(gy)
        gx = device.empty(x.shape, x.dtype, dev)
        gl = device.empty((N, C), x.dtype, dev)
        ga = device.empty((N, K), x.dtype, dev)
        gz = device.empty((N, C), x.dtype, dev)
        gw1, gw2 = device.empty((K, C), x.dtype, dev), device.empty((C, K), x.dtype, dev)
        gb1, gb2 = device.empty((K,), x.dtype, dev), device.empty((C,), x.dtype, dev)
        x3, M = x.reshape(N, C, H * W), H * W
        if gx.size:
            gx3, gy3 = gx.reshape(N, C, M), gy.reshape(N, C, M)
            args = (gy3, x3, self.s, self.h, self.w1, self.w2, plane_tasks(N))
            se_backward_kernel(gx3, gl, ga, gz, *args)
        # with N = 0 the sums over samples are empty: zero weight gradients
        se_weight_grad_kernel(gw1, gb1, gw2, gb2, gl, ga, self.z, self.h)
        need = self.needs_input_grad
        grads = (gx, gw1, gb1, gw2, gb2)
        return tuple(g if want else None for g, want in zip(grads, need))


def squeeze_excite_with_weights(x, w1, b1, w2, b2):
    """(y, s): the SE output and its channel weights s = sigmoid(l) as an (N, C) array."""
    _check(x, w1, b1, w2, b2)
    fn = SqueezeExcite()
    y = fn(x, w1, b1, w2, b2)
    return y, fn.s


def squeeze_excite(x, w1, b1, w2, b2):
    """``x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)`` broadcast over H, W, in one op."""
    return squeeze_excite_with_weights(x, w1, b1, w2, b2)[0]


def _check(x, w1, b1, w2, b2):
    if x.ndim != 4:
        raise ValueError(f"squeeze_excite: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"squeeze_excite: expected non-empty H and W, got shape {x.shape}")
    C = x.shape[1]
    if w1.ndim != 2 or w1.shape[1] != C or w1.shape[0] < 1:
        raise ValueError(
            f"squeeze_excite: expected w1 of shape (K, {C}) with K >= 1 for x of shape "
            f"{tuple(x.shape)}, got {tuple(w1.shape)}"
        )
    K = w1.shape[0]
    expected = {"b1": (K,), "w2": (C, K), "b2": (C,)}
    for name, t in zip(expected, (b1, w2, b2)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"squeeze_excite: expected {name} of shape {expected[name]} for x of shape "
                f"{tuple(x.shape)} and w1 of shape {tuple(w1.shape)}, got {tuple(t.shape)}"
            )
    dtypes = {t.dtype for t in (x, w1, b1, w2, b2)}
    if len(dtypes) != 1 or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"squeeze_excite: expected x and weights of one floating-point dtype, got "
            f"{sorted(str(d) for d in dtypes)}"
        )
