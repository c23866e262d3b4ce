"""Shape changes that keep the row-major element order: reshape/view, flatten, squeeze,
unsqueeze. The data is shared (contiguous arrays reshape for free); backward reshapes
the gradient back: gx = gy.reshape(x.shape).
"""

import math

from minicbam.function import Function


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return (gy.reshape(self.x_shape),)


def resolve_shape(op, x_shape, shape):
    """``shape`` with its one -1 inferred; a clear error when sizes do not match."""
    shape = tuple(int(s) for s in shape)
    total = math.prod(x_shape)
    if shape.count(-1) > 1:
        raise ValueError(f"{op}: only one dimension can be -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or total % known:
            raise ValueError(f"{op}: shape {shape} is invalid for input of size {total}")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if math.prod(shape) != total or any(s < 0 for s in shape):
        raise ValueError(f"{op}: shape {shape} is invalid for input of shape {x_shape} ({total})")
    return shape


def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = resolve_shape("reshape", x.shape, shape)
    if shape == x.shape:
        return x
    y = Reshape(shape)(x)
    y._base = x  # y's array is a view of x's: an in-place change of y changes x (inplace.py)
    return y


def _dim(op, d, ndim):
    if not -ndim <= d < ndim:
        raise IndexError(f"{op}: dimension {d} out of range for {ndim} dimensions")
    return d % ndim


def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return reshape(x, 1)
    start, end = _dim("flatten", start_dim, x.ndim), _dim("flatten", end_dim, x.ndim)
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shape = x.shape[:start] + (-1,) + x.shape[end + 1 :]
    return reshape(x, shape)


def unsqueeze(x, dim):
    d = _dim("unsqueeze", dim, x.ndim + 1)
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def squeeze(x, dim=None):
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    dims = {_dim("squeeze", d, max(x.ndim, 1)) for d in dims}
    return reshape(x, tuple(s for k, s in enumerate(x.shape) if not (k in dims and s == 1)))
