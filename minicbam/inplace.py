"""In-place tensor ops (``add_``, ``mul_``, ``-=``, ``zero_``, ``copy_``, ...) and the version
counters that make them safe for autograd, as in PyTorch.

Every in-place op computes the out-of-place result ``r = op(t, ...)`` and then either

* writes ``r`` into ``t``'s buffer (grad mode off, or nothing involved requires grad): the
  array keeps its identity, so ``t.detach()`` and optimizer state see the change; or
* re-bases ``t`` on ``r`` (grad mode on and ``r`` requires grad, e.g. ``h.mul_(2)`` on an
  activation): ``t`` takes ``r``'s fresh array and creator, and ``r``'s graph starts from an
  alias of the old ``t``. The old array is left untouched, so ops that saved it stay right.

Either way ``t``'s version counter is bumped (``function.bump_version``). Backward then raises
PyTorch's "modified by an inplace operation" error for an op that saved (or routed its
gradient through) ``t`` before the change: its gradient would otherwise silently use the new
values. Optimizers bump the counter of every parameter they update.

Rules, as PyTorch's:
    a leaf that requires grad cannot be changed in place while grad mode is on
        (``with mc.no_grad(): w -= lr * w.grad`` is the way; ``w`` stays a leaf);
    the result must have ``t``'s shape (no broadcasting of ``t`` itself);
    the result's dtype must cast to ``t``'s within its kind (float64 into float32 is fine,
        float into int64 or int into bool is an error); ``copy_`` casts anything.
"""

import numpy as np

from minicbam import device
from minicbam.function import Function, bump_version, is_grad_enabled
from minicbam.tensor import Tensor


class Fill(Function):
    """y = value everywhere (``fill_``/``zero_`` under autograd); gx = 0."""

    saves_tensors = False

    def __init__(self, value):
        self.value = value

    def forward(self, x):
        return device.full(x.shape, self.value, x.dtype, device.device_of(x))

    def backward(self, gy):
        return (device.zeros(gy.shape, gy.dtype, device.device_of(gy)),)


def apply_(t, name, compute, any_cast=False):
    """Run ``compute(source)`` (an out-of-place op on a tensor holding ``t``'s values) and
    make its result ``t``'s new value; returns ``t``."""
    grad_mode = is_grad_enabled()
    if grad_mode and t.requires_grad and t.creator is None:
        raise RuntimeError(
            f"{name}: a leaf Variable that requires grad is being used in an in-place "
            f"operation (shape {t.shape}); update it under `with mc.no_grad():`, as "
            f"optimizers do, or use the out-of-place op"
        )
    result = compute(_alias(t) if grad_mode else t)
    _check_result(name, t, result, any_cast)
    if grad_mode and result.requires_grad:
        if t._base is not None:
            raise RuntimeError(
                f"{name}: in-place ops on a view (reshape, view, detach) under autograd are "
                f"not supported (shape {t.shape}); apply the op to the base tensor, use the "
                f"out-of-place op, or run it under no_grad"
            )
        _rebase(t, result)
    else:
        _write(t, result)
    bump_version(t)
    if t.creator is not None and not (grad_mode and result.requires_grad):
        t.creator.output_stamp = t._stamp  # the op that made t sees its output changed
    return t


def _alias(t):
    """A new Tensor object standing for ``t`` as it is now (same array, same creator)."""
    a = Tensor(t.data)
    a.creator, a.requires_grad = t.creator, t.requires_grad
    a._version, a._stamp = t._version, t._stamp
    return a


def _check_result(name, t, result, any_cast):
    if result.shape != t.shape:
        raise RuntimeError(
            f"{name}: output with shape {t.shape} doesn't match the broadcast shape {result.shape}"
        )
    if not any_cast and not np.can_cast(result.dtype, t.dtype, casting="same_kind"):
        raise RuntimeError(
            f"{name}: result type {result.dtype} can't be cast to the desired output type {t.dtype}"
        )


def _rebase(t, result):
    from minicbam.ops.cast import cast

    result = cast(result, t.dtype)
    t.data, t.creator, t.requires_grad = result.data, result.creator, True


def _write(t, result):
    from minicbam.kernels.strided import cast_array

    src = result.data
    if np.dtype(src.dtype) != t.dtype:
        src = cast_array(src, t.dtype)
    if isinstance(t.data, np.ndarray):
        np.copyto(t.data, src)
    elif t.data.size:
        t.data.copy_to_device(src)


# ----------------------------------------------------------------------------- the ops
def _scaled(other, alpha):
    from minicbam.ops.binary import mul

    if alpha == 1:
        return other
    return mul(other, alpha) if isinstance(other, Tensor) else other * alpha


def add_(t, other, alpha=1):
    from minicbam.ops.binary import add

    return apply_(t, "add_", lambda s: add(s, _scaled(other, alpha)))


def sub_(t, other, alpha=1):
    from minicbam.ops.binary import sub

    return apply_(t, "sub_", lambda s: sub(s, _scaled(other, alpha)))


def mul_(t, other):
    from minicbam.ops.binary import mul

    return apply_(t, "mul_", lambda s: mul(s, other))


def div_(t, other):
    from minicbam.ops.binary import div

    return apply_(t, "div_", lambda s: div(s, other))


def clamp_(t, min=None, max=None):
    from minicbam.ops.unary import clamp

    return apply_(t, "clamp_", lambda s: clamp(s, min, max))


def fill_(t, value):
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise RuntimeError(
                f"fill_: only supports a 0-dimensional value tensor, got shape {value.shape}"
            )
        value = value.item()
    return apply_(t, "fill_", lambda s: Fill(value)(s), any_cast=True)


def zero_(t):
    return fill_(t, 0)


def copy_(t, src):
    from minicbam.ops.binary import add, mul
    from minicbam.ops.cast import cast
    from minicbam.ops.expand import broadcast_to
    from minicbam.ops.move import move

    if not isinstance(src, Tensor):
        raise TypeError(f"copy_: expected a Tensor as src, got {type(src).__name__}")

    def compute(s):
        r = broadcast_to(cast(move(src, t.device), t.dtype), t.shape)
        if not (is_grad_enabled() and (s.requires_grad or r.requires_grad)):
            return r
        if not r.requires_grad:  # t's old values get gradient 0 (PyTorch's CopyBackwards)
            return add(Fill(0)(s), r)
        # re-based onto src itself, t would share src's array: give it a copy (gx = gy)
        return mul(r, 1.0) if r is src else r

    return apply_(t, "copy_", compute, any_cast=True)
