"""Supported dtypes and PyTorch's type-promotion rules.

Supported: bool, uint8, int8, int16, int32, int64, float32, float64. Anything else
(float16, long double, complex, strings, objects) is refused by ``check_dtype`` where it
enters: ``mc.tensor``, the factories, ``Tensor.to``, the layers' ``dtype=``.

Promotion (``result_type``), as ``torch.result_type``. Operands are ranked by *priority*:
tensors with dimensions > 0-d tensors > Python numbers (and NumPy scalars); and by
*category*: bool < integer < floating. Within each priority the operands' dtypes are
promoted pairwise (``promote_types``); then a lower-priority group changes the result only
if its category is higher:

    promote_types(a, b):  same category -> the wider (int8 + uint8 -> int16, as NumPy);
                          bool with an integer -> the integer; integer with a float -> the float
    Python numbers:       float -> float32 (the default dtype), int -> int64, bool -> bool

    float32 tensor + float64 tensor     -> float64
    float32 tensor + 0-d float64 tensor -> float32   (same category: dimensions win)
    int32 tensor + 0-d float64 tensor   -> float64   (higher category: its dtype joins)
    float32 tensor + 2.5                -> float32   (Python scalars never upcast tensors)
    int64 tensor + 2.5                  -> float32   (the default float)
    bool tensor + 1                     -> int64
    int8 tensor + 1                     -> int8

True division of integers or bools gives float32; ``sum`` of integers or bools gives
int64 (so ``(pred == y).sum()`` counts, and int8 sums do not wrap).
"""

import numbers

import numpy as np

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
int16 = np.dtype(np.int16)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)

SUPPORTED_DTYPES = (bool_, uint8, int8, int16, int32, int64, float32, float64)
FLOAT_DTYPES = (float32, float64)
DEFAULT_FLOAT = float32

_BOOL, _INT, _FLOAT = 0, 1, 2


def check_dtype(op, dtype, floating=False):
    """``dtype`` as a NumPy dtype if minicbam supports it, else a TypeError naming ``op`` and
    the supported dtypes (unsupported ones would otherwise fail later, in the first kernel)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: {dtype!r} is not a dtype") from None
    allowed = FLOAT_DTYPES if floating else SUPPORTED_DTYPES
    if dt not in allowed:
        names = ", ".join(str(d) for d in allowed)
        kind = "floating-point dtypes" if floating else "dtypes"
        raise TypeError(f"{op}: dtype {dt} is not supported; the supported {kind} are {names}")
    return dt


def category(dtype):
    kind = dtype.kind
    return _FLOAT if kind == "f" else (_BOOL if kind == "b" else _INT)


def promote_types(a, b):
    """The smallest dtype holding both (PyTorch's table: an integer with a float gives the
    float, where NumPy would widen int64 + float32 to float64)."""
    if a == b:
        return a
    ca, cb = category(a), category(b)
    if ca != cb:
        return a if ca > cb else b
    return np.promote_types(a, b)


def number_dtype(value):
    """The dtype a Python number (or NumPy scalar) stands for in promotion."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, numbers.Integral):
        return int64
    if isinstance(value, numbers.Real):
        return DEFAULT_FLOAT
    raise TypeError(f"expected a Tensor or a real number, got {type(value).__name__}")


def _combine(higher, lower):
    """PyTorch's combine_categories: a lower-priority group counts only in a higher category."""
    if higher is None:
        return lower
    if lower is None or category(higher) == _FLOAT:
        return higher
    if category(higher) == _BOOL or category(lower) == _FLOAT:
        return promote_types(higher, lower)
    return higher


def result_type(*operands):
    """The dtype of an elementwise op on ``operands`` (Tensors and numbers)."""
    groups = [None, None, None]  # dimensioned tensors, 0-d tensors, numbers
    for x in operands:
        if isinstance(x, (numbers.Number, np.bool_)):
            k, dt = 2, number_dtype(x)
        else:  # a Tensor
            k, dt = (0 if x.ndim else 1), x.dtype
        groups[k] = dt if groups[k] is None else promote_types(groups[k], dt)
    return _combine(groups[0], _combine(groups[1], groups[2]))


def true_divide_type(dtype):
    """``/`` on integers and bools gives the default float."""
    return dtype if dtype.kind == "f" else DEFAULT_FLOAT


def sum_type(dtype):
    """``sum`` of integers and bools accumulates and returns int64."""
    return dtype if dtype.kind == "f" else int64
