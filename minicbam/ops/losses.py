"""Regression and binary-classification losses, composed from differentiable ops, plus the
one elementwise op they need that had no kernel yet (softplus).

With d = x - t (broadcast) and the reduction R(l) = l ("none"), sum(l) or mean(l):

    mse_loss:   R(d^2)                                   gx = R'(gy) * 2 d
    l1_loss:    R(|d|)                                   gx = R'(gy) * sign(d)
    softplus:   y = (1/beta) log(1 + e^(beta x)), = x where beta x > threshold
                computed as (max(z, 0) + log1p(e^-|z|)) / beta with z = beta x
                gx = gy * sigmoid(beta x)  (gy where beta x > threshold)
    binary_cross_entropy_with_logits (x logits, t targets in [0, 1], lw = 1 + (pw - 1) t):
                l = w * ((1 - t) x + lw * softplus(-x))  (= -w [pw t log s(x) + (1-t) log(1-s(x))])
    binary_cross_entropy (x probabilities):
                l = -w (t max(log x, -100) + (1 - t) max(log(1 - x), -100))   (PyTorch's clamp)

The gradients of the compositions follow from their parts (the engine applies the chain
rule): the docstring above lists what they amount to.
"""

import math

import numpy as np
from numba.extending import register_jitable

from minicbam.function import Function
from minicbam.kernels.elementwise import apply_binary, apply_unary, binary_kernel, unary_kernel
from minicbam.ops.expand import broadcast_shape
from minicbam.ops.reduce import mean, sum
from minicbam.ops.unary import abs, clamp, log

REDUCTIONS = ("none", "mean", "sum")


@register_jitable
def _softplus(x, beta, threshold):
    z = beta * x
    if z > threshold:
        return x
    if z > 0:
        return (z + math.log1p(math.exp(-z))) / beta
    return math.log1p(math.exp(z)) / beta


@register_jitable
def _softplus_grad(gy, x, beta, threshold):
    z = beta * x
    if z > threshold:
        return gy
    # sigmoid(z) = exp(-softplus(-z)): overflow-free and free of float literals, which
    # would turn float32 arithmetic into float64 on the GPU.
    if z >= 0:
        return gy * math.exp(-math.log1p(math.exp(-z)))
    return gy * math.exp(z - math.log1p(math.exp(z)))


softplus_kernel = unary_kernel(_softplus)
softplus_grad_kernel = binary_kernel(_softplus_grad)


class Softplus(Function):
    def __init__(self, beta, threshold):
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        self.x = x
        return apply_unary(softplus_kernel, x, self.beta, self.threshold)

    def backward(self, gy):
        return (apply_binary(softplus_grad_kernel, gy, self.x, self.beta, self.threshold),)


def softplus(input, beta=1.0, threshold=20.0):
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold``; smooth everywhere."""
    if not np.issubdtype(input.dtype, np.floating):
        raise TypeError(f"softplus: expected a floating-point tensor, got dtype {input.dtype}")
    if beta <= 0:
        raise ValueError(f"softplus: beta must be positive, got {beta}")
    return Softplus(float(beta), float(threshold))(input)


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction):
    if reduction == "sum":
        return sum(loss)
    if reduction == "mean":
        return mean(loss)
    return loss


def _check_shapes(op, x, t):
    if x.shape != t.shape:
        raise ValueError(f"{op}: target size {t.shape} must be the same as input size {x.shape}")


def mse_loss(input, target, reduction="mean"):
    """Mean squared error ``R((x - t)^2)``; shapes broadcast as in PyTorch."""
    _check_reduction("mse_loss", reduction)
    broadcast_shape("mse_loss", input.shape, getattr(target, "shape", ()))
    d = input - target
    return _reduce(d * d, reduction)


def l1_loss(input, target, reduction="mean"):
    """Mean absolute error ``R(|x - t|)``; shapes broadcast as in PyTorch."""
    _check_reduction("l1_loss", reduction)
    broadcast_shape("l1_loss", input.shape, getattr(target, "shape", ()))
    return _reduce(abs(input - target), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Sigmoid + binary cross-entropy in one stable expression (see the module docstring)."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    _check_shapes("binary_cross_entropy_with_logits", input, target)
    loss_neg = softplus(-input)  # -log(1 - sigmoid(x)) - x  ==  -log sigmoid(x)
    if pos_weight is not None:
        loss_neg = loss_neg * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input + loss_neg
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities ``input`` in [0, 1], logs clamped at -100."""
    _check_reduction("binary_cross_entropy", reduction)
    _check_shapes("binary_cross_entropy", input, target)
    loss = -(
        target * clamp(log(input), min=-100.0)
        + (1.0 - target) * clamp(log(1.0 - input), min=-100.0)
    )
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)
