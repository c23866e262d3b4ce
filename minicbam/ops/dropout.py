"""Dropout: zero each element with probability p and rescale the survivors (inverted dropout).

    m_i ~ Bernoulli(1 - p),  drawn from minicbam's generator (mc.manual_seed) on the host
    y = x * m / (1 - p)                  gx = gy * m / (1 - p)

The scaled mask s = m / (1 - p) is built on the host in x's dtype, moved to x's device and
saved for backward; both directions are then one elementwise product (binary.py's kernel).
p = 1 drops everything (s = 0, so y = 0, not 0 * inf); ``training=False`` or p = 0 is the
identity, as in PyTorch (the input itself is returned).
"""

import numpy as np

from minicbam import device
from minicbam.function import Function
from minicbam.ops.binary import mul_arrays
from minicbam.tensor import generator


class Dropout(Function):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        keep = generator().random(x.shape) >= self.p  # P(keep) = 1 - p
        scale = 0.0 if self.p >= 1 else 1.0 / (1.0 - self.p)
        self.mask = device.to_device((keep * scale).astype(x.dtype), device.device_of(x))
        return mul_arrays(x, self.mask)

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
