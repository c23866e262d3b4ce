"""The graph node, grad mode and the reverse-mode sweep.

A ``Function`` instance is one node of the graph. Calling it on tensors runs ``forward`` on
their raw arrays and, when any input requires grad (and grad mode is on), records itself
as the output's ``creator``. ``backward(gy)`` maps the output gradient ``gy = dL/dy`` to
one gradient per input, ``dL/dx_i = gy . dy/dx_i`` (or None where no gradient is needed).

``run_backward`` visits nodes in reverse topological order (an iterative DFS, so deep
graphs do not hit Python's recursion limit), accumulating gradients that fan in from
several consumers by addition.
"""

import contextlib
import functools

from minicbam import device

_grad_enabled = True
_detect_anomaly = False
# The stamp of the latest in-place modification of any tensor (0: none yet). Each recorded
# op keeps the stamp current when it ran; a tensor keeps the stamp of its own last in-place
# change. ``t._stamp > fn.stamp`` therefore says "t changed after fn saw it", at the cost
# of one attribute store per recorded op.
_inplace_stamp = 0


def bump_version(t):
    """Record an in-place change of ``t`` (every in-place op and optimizer step calls this)."""
    global _inplace_stamp
    _inplace_stamp += 1
    while t is not None:  # a view (detach, reshape) shares its base's array
        t._version += 1
        t._stamp = _inplace_stamp
        t = t._base


def is_grad_enabled():
    return _grad_enabled


def set_grad_enabled(mode):
    global _grad_enabled
    _grad_enabled = bool(mode)


def is_anomaly_enabled():
    return _detect_anomaly


def set_detect_anomaly(mode):
    global _detect_anomaly
    _detect_anomaly = bool(mode)


@contextlib.contextmanager
def detect_anomaly():
    """Check every op's output and every gradient for NaN/inf and name the op that made
    the first one. Opt-in: each check copies CUDA arrays to the host."""
    previous = is_anomaly_enabled()
    set_detect_anomaly(True)
    try:
        yield
    finally:
        set_detect_anomaly(previous)


def _check_finite(array, what):
    import numpy as np

    host = array if isinstance(array, np.ndarray) else device.to_host(array)
    if np.issubdtype(host.dtype, np.floating) and not np.all(np.isfinite(host)):
        kind = "nan" if np.any(np.isnan(host)) else "inf"
        raise FloatingPointError(
            f"detect_anomaly: {what} produced {kind} values (shape {host.shape})"
        )


class _GradMode(contextlib.ContextDecorator):
    """Context manager and decorator that sets grad mode and restores it on exit."""

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.previous = is_grad_enabled()
        set_grad_enabled(self.mode)

    def __exit__(self, *exc):
        set_grad_enabled(self.previous)
        return False


def no_grad(fn=None):
    """``with mc.no_grad():`` or ``@mc.no_grad`` (with or without parentheses)."""
    if callable(fn):
        return functools.wraps(fn)(_GradMode(False)(fn))
    return _GradMode(False)


def enable_grad(fn=None):
    if callable(fn):
        return functools.wraps(fn)(_GradMode(True)(fn))
    return _GradMode(True)


class Function:
    """One differentiable operation. Subclasses implement ``forward`` and ``backward``.

    Non-tensor parameters go to ``__init__``; ``forward(*arrays)`` returns one array;
    ``backward(gy)`` returns a tuple with one array (or None) per forward input.
    ``self.needs_input_grad[i]`` says whether input i wants a gradient.
    """

    inputs = ()
    needs_input_grad = ()
    freed = False
    stamp = 0
    output_stamp = 0  # set when the op's output is changed in place (inplace.py)
    # False for ops whose backward reads neither their inputs nor their output (add, sum,
    # reshape, ...): changing those in place between forward and backward is harmless.
    saves_tensors = True

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        """Drop the arrays saved for backward (everything but the graph edges)."""
        edges = {"inputs": self.inputs, "needs_input_grad": self.needs_input_grad}
        self.__dict__.clear()
        self.__dict__.update(edges)
        self.freed = True

    def __call__(self, *inputs):
        # tensor.py imports the ops, which import this module, so Tensor is looked up late.
        from minicbam.tensor import Tensor

        check_same_device(type(self).__name__, inputs)
        self.needs_input_grad = tuple(t.requires_grad for t in inputs)
        y = self.forward(*(t.data for t in inputs))
        if _detect_anomaly:
            _check_finite(y, f"{type(self).__name__}.forward")
        requires_grad = is_grad_enabled() and any(self.needs_input_grad)
        out = Tensor(y, requires_grad=requires_grad)
        if requires_grad:
            self.inputs = inputs
            self.stamp = _inplace_stamp
            out.creator = self
        return out


def check_same_device(op_name, tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        where = ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
        raise RuntimeError(f"{op_name}: expected all tensors on one device, got {where}")


def _topological_order(root):
    """Functions reachable from ``root.creator``, each after every function that consumes it."""
    order, visited = [], set()
    stack = [(root.creator, False)]
    while stack:
        fn, children_done = stack.pop()
        if children_done:
            order.append(fn)
            continue
        if id(fn) in visited:
            continue
        visited.add(id(fn))
        stack.append((fn, True))
        for t in fn.inputs:
            if t.creator is not None and id(t.creator) not in visited:
                stack.append((t.creator, False))
    order.reverse()
    return order


def run_backward(root, gy, retain_graph=False):
    """Accumulate d(root)/d(leaf) . gy into ``leaf.grad`` for every leaf that requires grad."""
    from minicbam.ops.binary import add_arrays

    grads = {root.creator: gy}  # keyed by Function: each node has exactly one output
    for fn in _topological_order(root):
        if fn.freed:
            raise RuntimeError(
                "backward: trying to backward through the graph a second time (or after its "
                "saved arrays were freed); pass retain_graph=True to the first backward"
            )
        g = grads.pop(fn, None)
        if g is None:  # this node's output did not reach the root
            continue
        if fn.stamp < _inplace_stamp:  # something changed in place since fn ran
            check_versions(fn)
        input_grads = fn.backward(g)
        if _detect_anomaly:
            for k, gx in enumerate(input_grads):
                if gx is not None:
                    _check_finite(gx, f"{type(fn).__name__}.backward (gradient of input {k})")
        if not retain_graph:
            fn.release()
        for t, gx in zip(fn.inputs, input_grads):
            if gx is None or not t.requires_grad:
                continue
            check_grad_shape(fn, t, gx)
            if t.creator is None:
                t.accumulate_grad(gx)
            elif t.creator in grads:
                grads[t.creator] = add_arrays(grads[t.creator], gx)
            else:
                grads[t.creator] = gx


def check_versions(fn):
    """PyTorch's error for a tensor changed in place after ``fn`` saved it (its gradient
    would silently use the new values). A non-leaf input that changed is an error even for
    ops that saved nothing: the in-place op re-routed its gradient (inplace.py)."""
    for k, t in enumerate(fn.inputs):
        if t._stamp > fn.stamp and (fn.saves_tensors or t.creator is not None):
            _raise_modified(fn, t, f"input {k}")
    if fn.saves_tensors and fn.output_stamp > fn.stamp:
        _raise_modified(fn, None, "its output")


def _raise_modified(fn, t, which):
    what = "" if t is None else f" (shape {tuple(t.shape)}, now at version {t._version})"
    raise RuntimeError(
        f"backward: one of the variables needed for gradient computation has been modified "
        f"by an inplace operation: {which} of {type(fn).__name__}{what} changed after the "
        f"forward pass saved it; run the in-place op (e.g. optimizer.step()) after backward, "
        f"or use its out-of-place form"
    )


def check_grad_shape(fn, t, gx):
    if tuple(gx.shape) != tuple(t.shape):
        raise RuntimeError(
            f"{type(fn).__name__}.backward returned a gradient of shape {tuple(gx.shape)} "
            f"for an input of shape {tuple(t.shape)}"
        )
