"""Binary elementwise ops on operands of one shape (``expand`` did any broadcasting).

    add: y = a + b    ga = gy,        gb = gy
    sub: y = a - b    ga = gy,        gb = -gy
    mul: y = a * b    ga = gy * b,    gb = gy * a     (both in one pass over gy)
    div: y = a / b    ga = gy / b,    gb = -gy * a / b^2 = -gy * y / b
    comparisons (==, !=, <, <=, >, >=) give bool tensors and no gradient.

Operands are first promoted to one dtype by PyTorch's rules (minicbam/dtypes.py); ``/`` of
integers or bools computes in float32.

With a Python number c on one side, a scalar op skips broadcasting c to a full array:
    x + c, x * c (gx = gy * c), x / c (gx = gy / c), c - x (gx = -gy), c / x (gx = -gy * y / x)
"""

import numbers

import numpy as np
from numba.extending import register_jitable

from minicbam.dtypes import result_type, true_divide_type
from minicbam.function import Function
from minicbam.kernels.elementwise import (
    apply_binary,
    apply_binary_grads,
    apply_binary_inplace,
    apply_unary,
    binary_grads_kernel,
    binary_kernel,
    unary_kernel,
)
from minicbam.ops.expand import broadcast_pair, same_shape_tensors
from minicbam.tensor import Tensor


@register_jitable
def _add(x, y, a, b):
    return x + y


@register_jitable
def _sub(x, y, a, b):
    return x - y


@register_jitable
def _mul(x, y, a, b):
    return x * y


@register_jitable
def _mul_grads(gy, a, b):  # (d/da, d/db) of a * b
    return gy * b, gy * a


@register_jitable
def _div(x, y, a, b):
    return x / y


@register_jitable
def _div_grad_b(gy, y_over_b, a, b):  # -gy * (y / b)
    return -gy * y_over_b


@register_jitable
def _neg(x, a, b):
    return -x


@register_jitable
def _add_scalar(x, c, b):
    return x + c


@register_jitable
def _mul_scalar(x, c, b):
    return x * c


@register_jitable
def _div_scalar(x, c, b):
    return x / c


@register_jitable
def _rsub_scalar(x, c, b):
    return c - x


@register_jitable
def _rdiv_scalar(x, c, b):
    return c / x


@register_jitable
def _eq(x, y, a, b):
    return x == y


@register_jitable
def _ne(x, y, a, b):
    return x != y


@register_jitable
def _lt(x, y, a, b):
    return x < y


@register_jitable
def _le(x, y, a, b):
    return x <= y


@register_jitable
def _gt(x, y, a, b):
    return x > y


@register_jitable
def _ge(x, y, a, b):
    return x >= y


add_kernel = binary_kernel(_add)
sub_kernel = binary_kernel(_sub)
mul_kernel = binary_kernel(_mul)
mul_grads_kernel = binary_grads_kernel(_mul_grads)
div_kernel = binary_kernel(_div)
div_grad_b_kernel = binary_kernel(_div_grad_b)
neg_kernel = unary_kernel(_neg)
SCALAR_KERNELS = {
    "add": unary_kernel(_add_scalar),
    "mul": unary_kernel(_mul_scalar),
    "div": unary_kernel(_div_scalar),
    "rsub": unary_kernel(_rsub_scalar),
    "rdiv": unary_kernel(_rdiv_scalar),
}
COMPARISONS = {
    "eq": binary_kernel(_eq),
    "ne": binary_kernel(_ne),
    "lt": binary_kernel(_lt),
    "le": binary_kernel(_le),
    "gt": binary_kernel(_gt),
    "ge": binary_kernel(_ge),
}


def add_arrays(a, b):
    return apply_binary(add_kernel, a, b)


def add_into(a, b):
    """``a += b`` in place (backward's gradient sums, into arrays it made itself)."""
    return apply_binary_inplace(add_kernel, a, b)


def mul_arrays(a, b):
    return apply_binary(mul_kernel, a, b)


def neg_array(a):
    return apply_unary(neg_kernel, a)


class Add(Function):
    saves_tensors = False

    def forward(self, a, b):
        return apply_binary(add_kernel, a, b)

    def backward(self, gy):
        return gy, gy


class Sub(Function):
    saves_tensors = False

    def forward(self, a, b):
        return apply_binary(sub_kernel, a, b)

    def backward(self, gy):
        return gy, (neg_array(gy) if self.needs_input_grad[1] else None)


class Mul(Function):
    fresh_input_grads = True  # each gradient is a new array, returned once

    def forward(self, a, b):
        self.a, self.b = a, b
        return apply_binary(mul_kernel, a, b)

    def backward(self, gy):
        need_a, need_b = self.needs_input_grad
        if need_a and need_b:
            return apply_binary_grads(mul_grads_kernel, gy, self.a, self.b)
        ga = mul_arrays(gy, self.b) if need_a else None
        gb = mul_arrays(gy, self.a) if need_b else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.b = b
        self.y = apply_binary(div_kernel, a, b)
        return self.y

    def backward(self, gy):
        ga = apply_binary(div_kernel, gy, self.b) if self.needs_input_grad[0] else None
        gb = None
        if self.needs_input_grad[1]:
            gb = apply_binary(div_grad_b_kernel, gy, apply_binary(div_kernel, self.y, self.b))
        return ga, gb


class ScalarOp(Function):
    """y = op(x, c) for a Python number c (see the module docstring for each gradient)."""

    graph_fields = Function.graph_fields + ("kind",)

    def __init__(self, kind, c):
        self.kind, self.c = kind, c
        self.saves_tensors = kind == "rdiv"  # the others' gradients need only gy and c

    def name(self):
        return self.kind.capitalize() + "Backward"  # "MulBackward" for x * 2, as for x * y

    def forward(self, x):
        self.x = x
        self.y = apply_unary(SCALAR_KERNELS[self.kind], x, self.c)
        return self.y

    def backward(self, gy):
        if self.kind == "add":
            return (gy,)
        if self.kind == "rsub":
            return (neg_array(gy),)
        if self.kind in ("mul", "div"):
            return (apply_unary(SCALAR_KERNELS[self.kind], gy, self.c),)
        # rdiv: d(c/x)/dx = -c/x^2 = -y/x
        return (apply_binary(div_grad_b_kernel, gy, apply_binary(div_kernel, self.y, self.x)),)


def _float_tensor_and_number(t, c):
    return (
        isinstance(t, Tensor)
        and isinstance(c, numbers.Real)
        and not isinstance(c, bool)
        and np.issubdtype(t.dtype, np.floating)
    )


def add(a, b):
    if same_shape_tensors(a, b):
        return Add()(a, b)
    if _float_tensor_and_number(a, b):
        return ScalarOp("add", b)(a)
    if _float_tensor_and_number(b, a):
        return ScalarOp("add", a)(b)
    return Add()(*broadcast_pair("add", a, b))


def sub(a, b):
    if same_shape_tensors(a, b):
        return Sub()(a, b)
    if _float_tensor_and_number(a, b):
        return ScalarOp("add", -b)(a)
    if _float_tensor_and_number(b, a):
        return ScalarOp("rsub", a)(b)
    return Sub()(*broadcast_pair("sub", a, b))


def mul(a, b):
    if same_shape_tensors(a, b):
        return Mul()(a, b)
    if _float_tensor_and_number(a, b):
        return ScalarOp("mul", b)(a)
    if _float_tensor_and_number(b, a):
        return ScalarOp("mul", a)(b)
    return Mul()(*broadcast_pair("mul", a, b))


def div(a, b):
    # true division: integers and bools divide as the default float (1 / 2 = 0.5)
    if same_shape_tensors(a, b) and a.data.dtype.kind == "f":
        return Div()(a, b)
    if _float_tensor_and_number(a, b):
        return ScalarOp("div", b)(a)
    if _float_tensor_and_number(b, a):
        return ScalarOp("rdiv", a)(b)
    return Div()(*broadcast_pair("div", a, b, true_divide_type(result_type(a, b))))


def compare(name, a, b):
    """``a <name> b`` as a bool tensor (no gradient)."""
    a, b = broadcast_pair(name, a, b)
    return Tensor(apply_binary(COMPARISONS[name], a.data, b.data, out_dtype=bool))
