"""Dropout: zero each element with probability p and rescale the survivors (inverted dropout).

    m_i ~ Bernoulli(1 - p),   y = x * m / (1 - p),   gx = gy * m / (1 - p)

The mask is made where x lives, by one kernel that writes both y and the scaled mask
s = m / (1 - p) (saved for backward, which is one elementwise product). Element i's
Bernoulli draw is a counter-based hash of (seed, i), the same body on the CPU and on CUDA,
so a device makes its mask without any copy and both devices give the same mask:

    z_i = splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15)     (64-bit, wrapping)
    m_i = [ z_i >> 11  >=  t ],   t = round(p * 2^53)          P(m_i = 1) = 1 - t / 2^53

``seed`` is a 64-bit integer drawn from minicbam's generator per call (``mc.manual_seed``
makes masks reproducible, and each call gets a new one). splitmix64 is the finaliser
xoroshiro's seeding uses; over consecutive counters it passes BigCrush. p = 1 drops
everything (s = 0, so y = 0, not 0 * inf); ``training=False`` or p = 0 is the identity, as
in PyTorch (the input itself is returned).
"""

import warnings

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device
from minicbam.device import Kernel
from minicbam.function import Function
from minicbam.ops.binary import mul_arrays
from minicbam.tensor import generator

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)


@register_jitable
def keep_bits(seed, i):
    """53 uniform bits for element i: splitmix64 of the counter (all uint64 arithmetic)."""
    z = seed + (np.uint64(i) + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return (z ^ (z >> _S31)) >> _S11


@register_jitable
def dropout_element(y, mask, x, seed, threshold, scale, i):
    m = scale if keep_bits(seed, i) >= threshold else scale - scale
    mask[i] = m
    y[i] = x[i] * m


@njit(parallel=True, cache=True)
def _dropout_cpu(y, mask, x, seed, threshold, scale):
    for i in prange(y.size):
        dropout_element(y, mask, x, seed, threshold, scale, i)


@device.cuda_factory
def _dropout_cuda():

    @cuda.jit
    def dropout_mask(y, mask, x, seed, threshold, scale):
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            dropout_element(y, mask, x, seed, threshold, scale, i)

    launch = device.launcher(dropout_mask)
    if device.cuda_backend() != "sim":
        return launch

    def quiet(*args):
        # the simulator runs the hash on NumPy uint64 scalars, which warn when they wrap
        # (the wrap is the point); compiled code wraps silently
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            launch(*args)

    quiet.kernel, quiet.gpu_shape = launch.kernel, launch.gpu_shape
    return quiet


# y, mask, x (flat, one dtype), uint64 seed, uint64 threshold, scale in x's dtype
dropout_kernel = Kernel(cpu=_dropout_cpu, cuda=_dropout_cuda, serial_small=True)


def keep_threshold(p):
    """t with P(53 uniform bits >= t) = 1 - p (to 2^-53)."""
    return np.uint64(round(p * 2.0**53))


class Dropout(Function):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        seed = generator().integers(0, 2**64, dtype=np.uint64)
        scale = x.dtype.type(0.0 if self.p >= 1 else 1.0 / (1.0 - self.p))
        dev = device.device_of(x)
        y, self.mask = device.empty(x.shape, x.dtype, dev), device.empty(x.shape, x.dtype, dev)
        if x.size:
            flat = device.flat
            dropout_kernel(flat(y), flat(self.mask), flat(x), seed, keep_threshold(self.p), scale)
        return y

    def backward(self, gy):
        return (mul_arrays(gy, self.mask),)


def dropout(input, p=0.5, training=True, inplace=False):
    """``x * mask / (1 - p)`` with ``mask`` ~ Bernoulli(1 - p) when training, else ``x``."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"dropout: p must be a number in [0, 1], got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}")
    if inplace:
        raise NotImplementedError("dropout: inplace=True is not supported (tensors are immutable)")
    if not training or p == 0:
        return input
    if not np.issubdtype(input.dtype, np.floating):
        raise TypeError(f"dropout: expected a floating-point tensor, got dtype {input.dtype}")
    return Dropout(float(p))(input)
