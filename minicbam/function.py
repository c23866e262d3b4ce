"""The graph node, grad mode and the reverse-mode sweep.

A ``Function`` instance is one node of the graph. Calling it on tensors runs ``forward`` on
their raw arrays and, when any input requires grad (and grad mode is on), records itself
as the output's ``creator``. ``backward(gy)`` maps the output gradient ``gy = dL/dy`` to
one gradient per input, ``dL/dx_i = gy . dy/dx_i`` (or None where no gradient is needed).

``run_backward`` visits nodes in reverse topological order (an iterative DFS, so deep
graphs do not hit Python's recursion limit), accumulating gradients that fan in from
several consumers by addition.

Two hooks for data-parallel training (``minicbam.nn.parallel``): a leaf's
``register_post_accumulate_grad_hook(fn)`` calls ``fn(leaf)`` once per sweep, when the last
gradient reaching that leaf has been added into ``leaf.grad`` (it is final for this sweep);
``queue_callback(fn)`` runs ``fn()`` once, after the current sweep has finished.
"""

import contextlib
import functools
import weakref

import numpy as np

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
_final_callbacks = []  # queue_callback: run once at the end of the current backward sweep


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
    output_shape = ()
    freed = False
    stamp = 0
    output_stamp = 0  # set when the op's output is changed in place (inplace.py)
    # False for ops whose backward reads neither their inputs nor their output (add, sum,
    # reshape, ...): changing those in place between forward and backward is harmless.
    saves_tensors = True
    # attributes that outlive release(): the graph edges and what name() and repr() show
    graph_fields = ("inputs", "needs_input_grad", "output_shape")

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        """Drop the arrays saved for backward (everything but ``graph_fields``)."""
        kept = {k: self.__dict__[k] for k in self.graph_fields if k in self.__dict__}
        self.__dict__.clear()
        self.__dict__.update(kept)
        self.freed = True

    # ------------------------------------------------------------------ study aids
    def name(self):
        """The node's name as PyTorch prints it, without the numeric suffix: "MulBackward"."""
        return type(self).__name__ + "Backward"

    @property
    def next_functions(self):
        """One ``(node, 0)`` per forward input, as in PyTorch: the input's ``grad_fn``, an
        ``AccumulateGrad`` for a leaf that requires grad, or None where no gradient flows.
        The index is always 0: every minicbam node has one output."""
        return tuple((_next_node(t), 0) for t in self.inputs)

    def __repr__(self):
        shapes = ", ".join(str(tuple(t.shape)) for t in self.inputs)
        return f"<{self.name()}: {shapes} -> {tuple(self.output_shape)}>"

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
            self.output_shape = tuple(y.shape)
            out.creator = self
        return out


class AccumulateGrad:
    """The graph's end for a leaf that requires grad (PyTorch's node of the same name): the
    backward sweep adds the gradient that reaches it into ``variable.grad``."""

    next_functions = ()

    def __init__(self, variable):
        self.variable = variable

    def name(self):
        return "AccumulateGrad"

    def __repr__(self):
        return f"<AccumulateGrad: {tuple(self.variable.shape)}>"


# One AccumulateGrad per live leaf, so that ``node is node`` holds as in PyTorch. Keyed by
# id: the node holds its leaf, so the id cannot be reused while the entry exists.
_accumulators = weakref.WeakValueDictionary()


def _next_node(t):
    if t.creator is not None:
        return t.creator
    if not t.requires_grad:
        return None
    node = _accumulators.get(id(t))
    if node is None:
        node = _accumulators[id(t)] = AccumulateGrad(t)
    return node


def check_same_device(op_name, tensors):
    cpu = [isinstance(t.data, np.ndarray) for t in tensors]  # device_of, without the calls
    if any(cpu) and not all(cpu):
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


def queue_callback(fn):
    """Run ``fn()`` once when the backward sweep now running ends (as PyTorch's
    ``Variable._execution_engine.queue_callback``)."""
    _final_callbacks.append(fn)


def _hooked_leaf_edges(order):
    """{id(leaf): [leaf, edges still to come, got a gradient]} for leaves with hooks."""
    hooked = {}
    for fn in order:
        for t in fn.inputs:
            if t.creator is None and t._post_accumulate_hooks:
                entry = hooked.setdefault(id(t), [t, 0, False])
                entry[1] += 1
    return hooked


def _edges_done(fn, hooked):
    """Count ``fn``'s edges into hooked leaves as delivered; run the hooks of finished leaves."""
    for t in fn.inputs:
        entry = hooked.get(id(t)) if t.creator is None else None
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0 and entry[2]:
                t.run_post_accumulate_hooks()


def run_final_callbacks():
    while _final_callbacks:
        _final_callbacks.pop(0)()


def run_backward(root, gy, retain_graph=False):
    """Accumulate d(root)/d(leaf) . gy into ``leaf.grad`` for every leaf that requires grad."""
    grads = {root.creator: gy}  # keyed by Function: each node has exactly one output
    order = _topological_order(root)
    hooked = _hooked_leaf_edges(order)
    try:
        _sweep(order, grads, hooked, retain_graph)
    except BaseException:
        _final_callbacks.clear()  # a failed sweep must not finish in the next one
        raise
    run_final_callbacks()


def _sweep(order, grads, hooked, retain_graph):
    from minicbam.ops.binary import add_arrays

    for fn in order:
        if fn.freed:
            raise RuntimeError(
                "backward: trying to backward through the graph a second time (or after its "
                "saved arrays were freed); pass retain_graph=True to the first backward"
            )
        g = grads.pop(fn, None)
        if g is None:  # this node's output did not reach the root
            _edges_done(fn, hooked)
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
                if id(t) in hooked:
                    hooked[id(t)][2] = True
            elif t.creator in grads:
                grads[t.creator] = add_arrays(grads[t.creator], gx)
            else:
                grads[t.creator] = gx
        _edges_done(fn, hooked)


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
