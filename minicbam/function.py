"""The graph node, grad mode and the reverse-mode sweep.

A ``Function`` instance is one node of the graph. Calling it on tensors runs ``forward`` on
their raw arrays and, when any input requires grad (and grad mode is on), records itself
as the output's ``creator``. ``backward(gy)`` maps the output gradient ``gy = dL/dy`` to
one gradient per input, ``dL/dx_i = gy . dy/dx_i`` (or None where no gradient is needed).

``run_backward`` visits nodes in reverse topological order (an iterative DFS, so deep
graphs do not hit Python's recursion limit), accumulating gradients that fan in from
several consumers by addition: the first sum makes a new array, later ones add into it in
place (a gradient array may be shared: add hands one gy to both inputs; a leaf's earlier
``.grad`` may be held by the user, so each sweep starts it on a new array).

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
    # True for ops whose backward returns new arrays, each one referenced nowhere else (one
    # per input): a leaf's first gradient then keeps the array instead of copying it
    fresh_input_grads = False
    # attributes that outlive release(): the graph edges and what name() and repr() show
    graph_fields = ("inputs", "needs_input_grad", "output_shape")

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def release(self):
        """Drop the arrays saved for backward (everything but ``graph_fields``)."""
        saved = self.__dict__
        kept = {"freed": True}
        for key in self.graph_fields:  # a loop, not a comprehension: ~0.4 us less per node
            if key in saved:
                kept[key] = saved[key]
        self.__dict__ = kept

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
        # One and two inputs are spelled out: this is every op's fixed cost, and the general
        # form's two list comprehensions and device check cost ~2.5 us of a ~5 us small op.
        if len(inputs) == 2:
            a, b = inputs
            a_data, b_data = a.data, b.data
            if isinstance(a_data, np.ndarray) is not isinstance(b_data, np.ndarray):
                check_same_device(type(self).__name__, inputs)  # raises
            needs = self.needs_input_grad = (a.requires_grad, b.requires_grad)
            y = self.forward(a_data, b_data)
        elif len(inputs) == 1:
            needs = self.needs_input_grad = (inputs[0].requires_grad,)
            y = self.forward(inputs[0].data)
        else:
            check_same_device(type(self).__name__, inputs)
            needs = self.needs_input_grad = tuple([t.requires_grad for t in inputs])
            y = self.forward(*[t.data for t in inputs])
        if _detect_anomaly:
            _check_finite(y, f"{type(self).__name__}.forward")
        out = (_Tensor or _tensor_class())(y)
        if _grad_enabled and any(needs):
            if y.dtype.kind != "f":
                out.requires_grad_(True)  # refuses a non-float output, with its message
            out.requires_grad = True
            self.inputs = inputs
            self.stamp = _inplace_stamp
            self.output_shape = y.shape  # a tuple (NumPy and numba device arrays)
            out.creator = self
        return out


# minicbam.tensor.Tensor, bound on first use: tensor.py imports this module, so it cannot be
# imported at the top, and an import statement inside __call__ costs ~1 us per op.
_Tensor = None


def _tensor_class():
    global _Tensor
    from minicbam.tensor import Tensor

    _Tensor = Tensor
    return Tensor


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
    if len(tensors) < 2:
        return
    cpu = isinstance(tensors[0].data, np.ndarray)  # device_of, without the calls
    for t in tensors:
        if isinstance(t.data, np.ndarray) is not cpu:
            where = ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
            raise RuntimeError(f"{op_name}: expected all tensors on one device, got {where}")


def _topological_order(root):
    """Functions reachable from ``root.creator``, each after every function that consumes it.

    A depth-first search that enters each function's inputs last to first and lists a
    function once all its inputs are done, then reversed (so the order, and with it the
    order in which fanned-in gradients are added, is that of the recursive search). Each
    function is pushed once; Functions hash by identity."""
    start = root.creator
    order, seen = [], {start}
    stack = [(start, reversed(start.inputs))]
    while stack:
        fn, inputs = stack[-1]
        for t in inputs:
            child = t.creator
            if child is not None and child not in seen:
                seen.add(child)
                stack.append((child, reversed(child.inputs)))
                break
        else:  # every input done
            stack.pop()
            order.append(fn)
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
    from minicbam.ops.binary import add_arrays, add_into

    # Gradient arrays this sweep made by adding, so referenced nowhere else: later
    # contributions are added into them in place. Keys: the Function whose output gradient
    # is summed in ``grads``, or id(leaf) -> the leaf's ``.grad`` array made this sweep.
    summed, fresh_leaf_grads = set(), {}
    for fn in order:
        if fn.freed:
            raise RuntimeError(
                "backward: trying to backward through the graph a second time (or after its "
                "saved arrays were freed); pass retain_graph=True to the first backward"
            )
        g = grads.pop(fn, None)
        if g is None:  # this node's output did not reach the root
            if hooked:
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
            if gx.shape != t.data.shape:
                check_grad_shape(fn, t, gx)
            creator = t.creator
            if creator is None:
                _accumulate_leaf(t, gx, fresh_leaf_grads, add_into, fn.fresh_input_grads)
                if hooked and id(t) in hooked:
                    hooked[id(t)][2] = True
            elif creator in summed:
                add_into(grads[creator], gx)
            elif creator in grads:
                # gx or the stored gradient may be an array that backward handed to several
                # inputs (add's gy): the first sum is a new array
                grads[creator] = add_arrays(grads[creator], gx)
                summed.add(creator)
            else:
                grads[creator] = gx
        if hooked:
            _edges_done(fn, hooked)


def _accumulate_leaf(t, gx, fresh, add_into, owned=False):
    """``t.grad += gx``. The first gradient of a sweep makes a new array (the old ``.grad``
    may be held elsewhere, e.g. by the user), or keeps ``gx`` when the op says nothing else
    holds it (``owned``); later ones in the same sweep add into it."""
    grad = t.grad
    if grad is not None and fresh.get(id(t)) is grad.data:
        add_into(grad.data, gx)
        return
    t.accumulate_grad(gx, owned)
    fresh[id(t)] = t.grad.data


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
    if tuple(gx.shape) != tuple(t.shape):  # (the sweep calls this only when they differ)
        raise RuntimeError(
            f"{type(fn).__name__}.backward returned a gradient of shape {tuple(gx.shape)} "
            f"for an input of shape {tuple(t.shape)}"
        )
