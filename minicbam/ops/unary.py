"""Unary elementwise ops. Forward body f and gradient body g with gx = g(gy, saved):

    neg      y = -x                 gx = -gy
    exp      y = e^x                gx = gy * y
    log      y = ln x               gx = gy / x
    sqrt     y = x^(1/2)            gx = gy / (2 y)
    abs      y = |x|                gx = gy * sign(x)
    relu     y = max(x, 0)          gx = gy * [not x <= 0]   (NaN stays NaN, passes gy)
    sigmoid  y = 1 / (1 + e^-x)     gx = gy * y * (1 - y)
    tanh     y = tanh x             gx = gy * (1 - y^2)
    clamp    y = min(max(x, lo), hi)  gx = gy * [lo <= x <= hi]   (NaN stays NaN, gx = 0)
    pow      y = x^p (p a scalar)   gx = gy * p * x^(p-1)   (gx = 0 for p = 0, also at x = 0)

At the boundaries the gradients are PyTorch's: relu'(0) = 0, |x|'(0) = 0, clamp's gradient is
1 at lo and hi, sqrt'(0) = inf.

The bodies' ``a, b`` parameters carry clamp's bounds and pow's exponent (p, p - 1); the
other ops pass ``(0, 1)`` there, so bodies get zero and one in the array's dtype (a Python
literal would make float32 CUDA code compute in float64).
"""

import math

import numpy as np
from numba.extending import register_jitable

from minicbam.function import Function
from minicbam.ops.binary import mul_arrays, neg_array
from minicbam.kernels.elementwise import apply_binary, apply_unary, binary_kernel, unary_kernel


@register_jitable
def _exp(x, a, b):
    return math.exp(x)


@register_jitable
def _log(x, a, b):
    return math.log(x)  # nan below 0, -inf at 0 (numba does not raise math domain errors)


@register_jitable
def _sqrt(x, a, b):
    return math.sqrt(x)


@register_jitable
def _abs(x, a, b):
    return x if x >= 0 else -x  # not abs(): this module's abs() is the tensor op


@register_jitable
def _relu(x, zero, one):
    # a comparison, not max(): max/fmax may return the non-NaN operand, and relu(NaN) must
    # be NaN (a corrupt input must not become finite logits)
    return zero if x <= zero else x  # noqa: FURB136


@register_jitable
def _sigmoid(x, zero, one):
    if x >= zero:  # two branches so that exp never overflows
        return one / (one + math.exp(-x))
    e = math.exp(x)
    return e / (one + e)


@register_jitable
def _tanh(x, a, b):
    return math.tanh(x)


@register_jitable
def _clamp(x, lo, hi):
    if x < lo:  # NaN fails both comparisons and is returned unchanged, as in PyTorch
        return lo
    if x > hi:
        return hi
    return x


@register_jitable
def _pow(x, p, p_minus_1):
    return x**p


@register_jitable
def _log_grad(gy, x, a, b):
    return gy / x


@register_jitable
def _sqrt_grad(gy, y, zero, one):
    return gy / (y + y)


@register_jitable
def _abs_grad(gy, x, zero, one):
    return gy if x > zero else (-gy if x < zero else zero)


@register_jitable
def _relu_grad(gy, x, zero, one):
    return zero if x <= zero else gy  # PyTorch's threshold_backward: NaN passes gy


@register_jitable
def _sigmoid_grad(gy, y, zero, one):
    return gy * y * (one - y)


@register_jitable
def _tanh_grad(gy, y, zero, one):
    return gy * (one - y * y)


@register_jitable
def _clamp_grad(gy, x, lo, hi):
    return gy * (lo <= x <= hi)  # bool * float keeps the float's type


@register_jitable
def _pow_grad(gy, x, p, p_minus_1):
    if p == p - p:  # p == 0: d(x^0)/dx = 0 everywhere, also at x = 0 (not 0 * 0^-1 = NaN)
        return p
    return gy * p * x**p_minus_1


exp_kernel, log_kernel, sqrt_kernel = unary_kernel(_exp), unary_kernel(_log), unary_kernel(_sqrt)
abs_kernel, relu_kernel, sigmoid_kernel = (
    unary_kernel(_abs),
    unary_kernel(_relu),
    unary_kernel(_sigmoid),
)
tanh_kernel, clamp_kernel, pow_kernel = (
    unary_kernel(_tanh),
    unary_kernel(_clamp),
    unary_kernel(_pow),
)
log_grad_kernel, sqrt_grad_kernel = binary_kernel(_log_grad), binary_kernel(_sqrt_grad)
abs_grad_kernel, relu_grad_kernel = binary_kernel(_abs_grad), binary_kernel(_relu_grad)
sigmoid_grad_kernel, tanh_grad_kernel = binary_kernel(_sigmoid_grad), binary_kernel(_tanh_grad)
clamp_grad_kernel, pow_grad_kernel = binary_kernel(_clamp_grad), binary_kernel(_pow_grad)


def _require_float(op, x):
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")


class Neg(Function):
    saves_tensors = False

    def forward(self, x):
        return neg_array(x)

    def backward(self, gy):
        return (neg_array(gy),)


class Exp(Function):
    def forward(self, x):
        self.y = apply_unary(exp_kernel, x)
        return self.y

    def backward(self, gy):
        return (mul_arrays(gy, self.y),)


class _SavesInput(Function):
    """y = f(x); gx = grad(gy, x, a, b)."""

    forward_kernel = grad_kernel = None

    def __init__(self, a=0.0, b=1.0):
        self.a, self.b = a, b

    def forward(self, x):
        self.x = x
        return apply_unary(self.forward_kernel, x, self.a, self.b)

    def backward(self, gy):
        return (apply_binary(self.grad_kernel, gy, self.x, self.a, self.b),)


class _SavesOutput(Function):
    """y = f(x); gx = grad(gy, y)."""

    forward_kernel = grad_kernel = None

    def forward(self, x):
        self.y = apply_unary(self.forward_kernel, x, 0.0, 1.0)
        return self.y

    def backward(self, gy):
        return (apply_binary(self.grad_kernel, gy, self.y, 0.0, 1.0),)


class Log(_SavesInput):
    forward_kernel, grad_kernel = log_kernel, log_grad_kernel


class Abs(_SavesInput):
    forward_kernel, grad_kernel = abs_kernel, abs_grad_kernel


class ReLU(_SavesInput):
    forward_kernel, grad_kernel = relu_kernel, relu_grad_kernel


class Clamp(_SavesInput):
    forward_kernel, grad_kernel = clamp_kernel, clamp_grad_kernel


class Pow(_SavesInput):
    forward_kernel, grad_kernel = pow_kernel, pow_grad_kernel


class Sqrt(_SavesOutput):
    forward_kernel, grad_kernel = sqrt_kernel, sqrt_grad_kernel


class Sigmoid(_SavesOutput):
    forward_kernel, grad_kernel = sigmoid_kernel, sigmoid_grad_kernel


class Tanh(_SavesOutput):
    forward_kernel, grad_kernel = tanh_kernel, tanh_grad_kernel


def neg(x):
    return Neg()(x)


def exp(x):
    _require_float("exp", x)
    return Exp()(x)


def log(x):
    _require_float("log", x)
    return Log()(x)


def sqrt(x):
    _require_float("sqrt", x)
    return Sqrt()(x)


def abs(x):
    return Abs()(x)


def relu(x):
    return ReLU()(x)


def sigmoid(x):
    _require_float("sigmoid", x)
    return Sigmoid()(x)


def tanh(x):
    _require_float("tanh", x)
    return Tanh()(x)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    lo = -math.inf if min is None else float(min)
    hi = math.inf if max is None else float(max)
    return Clamp(lo, hi)(x)


def pow(x, exponent):
    if not isinstance(exponent, (int, float)):
        raise TypeError(f"pow: only scalar exponents are supported, got {type(exponent).__name__}")
    _require_float("pow", x)
    return Pow(float(exponent), float(exponent) - 1.0)(x)
