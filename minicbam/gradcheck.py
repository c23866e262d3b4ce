"""Gradient checking by central finite differences, for users' own ops and modules.

For ``y = fn(*inputs)`` (a tensor or a tuple of tensors) pick a fixed random cotangent
``v`` of y's shape and the scalar ``L(x) = <v, fn(x)>``. Backward gives the analytic
``dL/dx = J^T v`` in one sweep; the numeric one is, per element j of each input,

    dL/dx_j ~ (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)

Both must agree within ``atol + rtol * |numeric|``. This is the inner-product form of the
Jacobian check (``<v, J u>`` both ways, HIPS/autograd's ``check_vjp``) with ``u = e_j`` for
every j, so a wrong entry of J^T v is reported with its input and index. Inputs must be
float64: float32's ~1e-7 resolution drowns a difference quotient.
"""

import numpy as np

from minicbam import device
from minicbam.function import no_grad
from minicbam.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when analytic and numeric gradients disagree."""


def _outputs(fn, inputs):
    y = fn(*inputs)
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _objective(outputs, cotangents):
    return float(sum(np.sum(y.numpy().astype(np.float64) * v) for y, v in zip(outputs, cotangents)))


def _numeric_grad(fn, inputs, k, cotangents, eps):
    x = inputs[k]
    host = x.numpy()
    grad = np.zeros(host.shape, dtype=np.float64)
    for j in np.ndindex(host.shape):
        values = []
        for step in (eps, -eps):
            shifted = host.copy()
            shifted[j] += step
            x.data = device.to_device(shifted, x.device)
            with no_grad():
                values.append(_objective(_outputs(fn, inputs), cotangents))
        grad[j] = (values[0] - values[1]) / (2 * eps)
    x.data = device.to_device(host, x.device)
    return grad


def _analytic_grads(fn, inputs, cotangents):
    for x in inputs:
        x.grad = None
    outputs = _outputs(fn, inputs)
    total = None
    for y, v in zip(outputs, cotangents):
        if not y.requires_grad:
            continue
        term = (y * Tensor(device.to_device(v.astype(y.dtype), y.device))).sum()
        total = term if total is None else total + term
    if total is not None:
        total.backward()
    return [None if x.grad is None else x.grad.numpy() for x in inputs]


def gradient_errors(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """(largest |numeric - analytic| over every input that requires grad, report lines for
    the inputs that fail the tolerance). The work behind ``gradcheck``, without its checks."""
    rng = np.random.default_rng(seed)
    with no_grad():
        outputs = _outputs(fn, inputs)
    cotangents = [rng.standard_normal(y.shape) for y in outputs]
    analytic = _analytic_grads(fn, inputs, cotangents)
    worst, report = 0.0, []
    for k, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        numeric = _numeric_grad(fn, inputs, k, cotangents, eps)
        got = np.zeros_like(numeric) if analytic[k] is None else analytic[k]
        worst = max(worst, float(np.max(np.abs(numeric - got), initial=0.0)))
        report.extend(_compare(k, x.shape, numeric, got, atol, rtol))
    return worst, report


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, seed=0):
    """Check the gradients of ``fn`` at ``inputs`` (a tensor or a tuple of tensors).

    Returns True when every input that requires grad passes. Otherwise raises
    ``GradcheckError`` naming the input, the worst element's index and the numeric vs
    analytic values; with ``raise_exception=False`` it returns False and the report is in
    ``gradcheck.last_report``.
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    checked = [k for k, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input tensor has requires_grad=True")
    for k in checked:
        if inputs[k].dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {k} has dtype {inputs[k].dtype}; finite differences need "
                "float64 inputs (use .double())"
            )
    _, report = gradient_errors(fn, inputs, eps, atol, rtol, seed)
    gradcheck.last_report = "\n".join(report)
    if report and raise_exception:
        raise GradcheckError(gradcheck.last_report)
    return not report


gradcheck.last_report = ""


def _compare(k, shape, numeric, analytic, atol, rtol):
    err = np.abs(numeric - analytic) - (atol + rtol * np.abs(numeric))
    if not np.any(err > 0) and np.all(np.isfinite(analytic)):
        return []
    worst = np.unravel_index(int(np.argmax(np.where(np.isfinite(err), err, np.inf))), shape)
    return [
        (
            f"gradcheck: input {k} (shape {tuple(shape)}): {int(np.sum(~(err <= 0)))} of "
            f"{numeric.size} elements disagree; worst at index {tuple(int(i) for i in worst)}: "
            f"numeric {numeric[worst]:.8g} vs analytic {analytic[worst]:.8g} "
            f"(atol={atol}, rtol={rtol})"
        )
    ]
