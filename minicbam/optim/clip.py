"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.

    clip_grad_norm_:   N = || (||g_1||_q, ..., ||g_k||_q) ||_q   (the q-norm of all the
                       gradients together; q = inf gives max |g|)
                       g_i <- g_i * min(1, max_norm / (N + 1e-6))
    clip_grad_value_:  g_i <- clamp(g_i, -clip_value, clip_value)

Gradients are replaced by rebinding ``p.grad`` (no array is written in place).
"""

import math

from minicbam.function import no_grad
from minicbam.tensor import Tensor


def _grads(parameters):
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in params if p.grad is not None]


def _norm(g, norm_type):
    """||g||_q as a Python float."""
    if norm_type == math.inf:
        return g.abs().amax().item()
    if norm_type == 2:
        return math.sqrt((g * g).sum().item())
    return g.abs().pow(norm_type).sum().item() ** (1 / norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their total ``norm_type``-norm is at most
    ``max_norm``; returns the total norm before clipping, as a float."""
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be positive (or inf), got {norm_type}")
    params = _grads(parameters)
    if not params:
        return 0.0
    with no_grad():
        norms = [_norm(p.grad, norm_type) for p in params]
        if norm_type == math.inf:
            total = max(norms)
        else:
            total = math.fsum(n**norm_type for n in norms) ** (1 / norm_type)
        if error_if_nonfinite and not math.isfinite(total):
            raise RuntimeError(
                f"clip_grad_norm_: the total norm of order {norm_type} is {total}; "
                "pass error_if_nonfinite=False to clip anyway"
            )
        coef = max_norm / (total + 1e-6)
        if coef < 1:  # scaling by 1 would change nothing
            for p in params:
                p.grad = p.grad * coef
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into ``[-clip_value, clip_value]``."""
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_value must be non-negative, got {clip_value}")
    with no_grad():
        for p in _grads(parameters):
            p.grad = p.grad.clamp(-clip_value, clip_value)
