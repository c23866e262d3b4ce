"""Helpers shared by the layers: PyTorch's ``_pair``, size checks, parameter creation."""

from minicbam.nn.parameter import Parameter
from minicbam.tensor import check_dtype, float32, zeros


def pair(value, name="argument"):
    """``value`` as a 2-tuple of ints (an int is repeated, as PyTorch's ``_pair``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value), int(value))


def check_positive(layer, **values):
    """Raise ValueError naming the first of ``values`` (ints or tuples) that is not > 0."""
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if any(int(v) <= 0 for v in items):
            raise ValueError(f"{layer}: {name} must be positive, got {value!r}")


def check_non_negative(layer, **values):
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if any(int(v) < 0 for v in items):
            raise ValueError(f"{layer}: {name} must be non-negative, got {value!r}")


def layer_dtype(layer, dtype):
    """A layer's ``dtype=`` argument: float32 by default, else float32 or float64 (a float16
    layer would build, then fail in its first op)."""
    return float32 if dtype is None else check_dtype(layer, dtype, floating=True)


def new_parameter(shape, device=None, dtype=None):
    """A zero-filled Parameter; layers then fill it in ``reset_parameters``."""
    return Parameter(zeros(shape, dtype=dtype or float32, device=device or "cpu"))
