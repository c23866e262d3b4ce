"""Broadcasting as one explicit op, and the rules that decide when it happens.

    expand:   y[i] = x[i with every broadcast index set to 0]      (NumPy broadcasting)
    backward: gx = sum_to(gy, x.shape), summing over every broadcast dimension

Binary ops never broadcast inside their kernels: ``broadcast_pair`` first promotes dtypes
(PyTorch's rules, minicbam/dtypes.py), lifts Python scalars to 0-d tensors of that dtype and
expands both operands to one shape.
"""

import numpy as np

from minicbam.dtypes import result_type
from minicbam.function import Function
from minicbam.ops.cast import cast
from minicbam.ops.reduce import sum_to_array
from minicbam.kernels.strided import broadcast_array
from minicbam.tensor import Tensor, tensor


class Expand(Function):
    saves_tensors = False

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = x.shape
        return broadcast_array(x, self.shape)

    def backward(self, gy):
        return (sum_to_array(gy, self.x_shape),)


def broadcast_shape(op, *shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(
            f"{op}: shapes {', '.join(str(tuple(s)) for s in shapes)} cannot be broadcast together"
        ) from None


def expand(x, *shape):
    """``x.expand(*shape)``; -1 keeps a dimension's size, as in PyTorch."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    lead = len(shape) - x.ndim
    if lead < 0:
        raise ValueError(f"expand: target shape {shape} has fewer dimensions than {x.shape}")
    target = tuple(x.shape[k - lead] if s == -1 else int(s) for k, s in enumerate(shape))
    for k, size in enumerate(x.shape):
        if size != 1 and size != target[lead + k]:
            raise ValueError(f"expand: cannot expand shape {x.shape} to {target}")
    if target == x.shape:
        return x
    return Expand(target)(x)


def broadcast_to(x, shape):
    return expand(x, tuple(shape))


def lift(value, dtype, like):
    """A Python/NumPy number as a 0-d tensor of ``dtype`` on ``like``'s device."""
    if isinstance(value, Tensor):
        return value
    return tensor(np.asarray(value, dtype=dtype), device=like.device)


def same_shape_tensors(a, b):
    """Two tensors of one shape and dtype: the common case, with nothing to lift, cast or
    expand (binary ops test it before anything else)."""
    return (
        isinstance(a, Tensor)
        and isinstance(b, Tensor)
        and a.data.shape == b.data.shape
        and (a.data.dtype is b.data.dtype or a.data.dtype == b.data.dtype)
    )


def broadcast_pair(op, a, b, dtype=None):
    """(a, b) as tensors of one dtype (PyTorch's promotion, minicbam/dtypes.py, unless
    ``dtype`` is given), device and shape."""
    if dtype is None and same_shape_tensors(a, b):
        return a, b  # the common case, checked first: nothing to lift, cast or expand
    if dtype is None:
        dtype = a.dtype if _same_dtype(a, b) else result_type(a, b)
    if not isinstance(a, Tensor):
        a = lift(a, dtype, b)
    if not isinstance(b, Tensor):
        b = lift(b, dtype, a)
    a, b = cast(a, dtype), cast(b, dtype)
    shape = broadcast_shape(op, a.shape, b.shape)
    return expand(a, shape), expand(b, shape)


def _same_dtype(a, b):
    # the common case, decided without the promotion rules
    return isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype
