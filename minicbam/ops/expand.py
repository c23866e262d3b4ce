"""Broadcasting as one explicit op, and the rules that decide when it happens.

    expand:   y[i] = x[i with every broadcast index set to 0]      (NumPy broadcasting)
    backward: gx = sum_to(gy, x.shape), summing over every broadcast dimension

Binary ops never broadcast inside their kernels: ``broadcast_pair`` first lifts Python
scalars to 0-d tensors, promotes dtypes (the wider float wins; ints become float when
paired with a float) and expands both operands to one shape.
"""

import numpy as np

from minicbam.function import Function
from minicbam.ops.cast import cast
from minicbam.ops.reduce import sum_to_array
from minicbam.kernels.strided import broadcast_array
from minicbam.tensor import Tensor, tensor


class Expand(Function):
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


def promoted_dtype(a, b):
    """float64 if either is float64; else float32 if either is a float; else a's dtype."""
    floats = [t.dtype for t in (a, b) if np.issubdtype(t.dtype, np.floating)]
    if floats:
        return np.dtype(np.float64) if np.float64 in floats else np.dtype(np.float32)
    return np.result_type(a.dtype, b.dtype)


def lift(value, like):
    """A Python/NumPy scalar as a 0-d tensor on ``like``'s device, in ``like``'s dtype (or
    float32 when ``like`` holds integers and the value is a float)."""
    if isinstance(value, Tensor):
        return value
    dtype = like.dtype
    if isinstance(value, float) and not np.issubdtype(dtype, np.floating):
        dtype = np.float32
    return tensor(np.asarray(value, dtype=dtype), device=like.device)


def broadcast_pair(op, a, b):
    """(a, b) as tensors of one dtype, device and shape."""
    if (
        isinstance(a, Tensor)
        and isinstance(b, Tensor)
        and a.data.shape == b.data.shape
        and a.data.dtype == b.data.dtype
    ):
        return a, b  # the common case, checked first: nothing to lift, cast or expand
    if not isinstance(a, Tensor):
        a = lift(a, b)
    b = lift(b, a)
    dtype = promoted_dtype(a, b)
    a, b = cast(a, dtype), cast(b, dtype)
    shape = broadcast_shape(op, a.shape, b.shape)
    return expand(a, shape), expand(b, shape)
