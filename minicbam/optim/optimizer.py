"""``Optimizer``: parameter groups, per-parameter state and (de)serialisation, as in PyTorch.

An optimizer holds ``param_groups``: a list of dicts, each with a ``"params"`` list and its
own copy of every hyper-parameter (``lr``, ...); a group's missing keys are filled from the
optimizer's ``defaults``. ``state[p]`` holds what the update rule carries between steps for
parameter ``p`` (momentum buffers, moment estimates, step counts).

A subclass computes the new value with minicbam ops under ``no_grad`` and rebinds
``p.data = new.data`` (or, Adam, runs one fused kernel writing ``p.data`` in place), so
parameters keep their identity and the same code runs on CPU and CUDA arrays. Either way
``step`` bumps the version counter of every parameter it updated, as PyTorch's in-place
steps do: backward through a graph built before the step raises instead of mixing old and
new weights.

``state_dict()`` is a plain nested dict, as PyTorch's::

    {"state": {index: {"step": 0-d int64 array, "exp_avg": ndarray, ...}, ...},
     "param_groups": [{"lr": ..., ..., "params": [index, ...]}, ...]}

where ``index`` numbers the parameters across all groups in order. Arrays are host (NumPy)
copies; ``load_state_dict`` moves them back onto each parameter's device and dtype.
"""

from collections.abc import Mapping

import numpy as np

from minicbam.function import bump_version, enable_grad, no_grad
from minicbam.kernels.strided import copy_array
from minicbam.tensor import Tensor, tensor, zeros_like

# State entries that are counters, not arrays shaped like the parameter.
_SCALAR_STATE = ("step",)


class Optimizer:
    """Base class: subclasses set ``defaults`` through ``__init__`` and implement
    ``_update_group(group)``; they may override ``_check_group(group)`` to validate
    hyper-parameters (called for every group, with defaults filled in)."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # keyed by the parameter Tensor itself (hashed by identity)
        self.param_groups = []
        groups = _named(type(self).__name__, _as_param_list, params)
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            settings = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} params, {settings}")
        return "\n".join(lines + [")"])

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        """Append a group (a dict with ``"params"``), filling unset hyper-parameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        name = type(self).__name__
        params = group["params"] = _named(name, _check_params, group.get("params"))
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        _named(name, self._check_group, group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _check_group(self, group):
        check_non_negative("learning rate", group.get("lr", 0.0))

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none=True):
        """Forget the gradients: ``p.grad = None`` (default) or a fresh zero tensor."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = None if set_to_none else zeros_like(p.grad)

    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional)
        recomputes the loss with gradients enabled and returns it; ``step`` returns it."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                self._update_group(group)
                for p in group["params"]:
                    if p.grad is not None:  # updated: a graph that saved p must not backward
                        bump_version(p)
        return loss

    def _update_group(self, group):
        raise NotImplementedError

    # ------------------------------------------------------------------ serialisation
    def state_dict(self):
        """Hyper-parameters and host copies of the state, parameters numbered in order."""
        index = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        state = {
            index[id(p)]: {k: _state_to_host(v) for k, v in s.items()}
            for p, s in self.state.items()
            if id(p) in index
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by ``state_dict`` (possibly through
        ``mc.save``/``mc.load``) onto this optimizer's parameters.

        Everything is checked and converted first (structure, parameter counts, each state
        entry's shape and dtype, each group's hyper-parameters); a ValueError naming the
        entry leaves the optimizer as it was."""
        name = type(self).__name__
        saved_groups, saved_state = _named(name, _check_saved, state_dict, len(self.param_groups))
        by_index = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: parameter group {i} has {len(saved['params'])} "
                    f"parameters in the saved state but {len(group['params'])} here"
                )
            by_index.update(zip(saved["params"], group["params"]))
        state = {}
        for j, entries in saved_state.items():
            if j not in by_index:
                raise ValueError(f"{name}.load_state_dict: state for unknown parameter index {j}")
            p = by_index[j]
            state[p] = {k: _state_to_param(name, j, k, v, p) for k, v in entries.items()}
        groups = []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            merged = dict(group)
            merged.update({k: _plain(v) for k, v in saved.items() if k != "params"})
            _named(f"{name}.load_state_dict: parameter group {i}", self._check_group, merged)
            groups.append(merged)
        for group, merged in zip(self.param_groups, groups):
            group.update(merged)
        self.state = state


# ----------------------------------------------------------------------------- helpers
def check_non_negative(name, value):
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"invalid {name}: {value} (must be >= 0)")


def _named(owner, check, *args):
    """Run the validation ``check(*args)``; its TypeError/ValueError names the optimizer."""
    try:
        return check(*args)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{owner}: {e}") from None


def _as_param_list(params):
    if isinstance(params, Tensor):
        raise TypeError(
            "params must be an iterable of Tensors or of dicts (parameter groups), got a single "
            "Tensor; wrap it in a list"
        )
    if isinstance(params, dict):
        raise TypeError("params must be an iterable of Tensors or dicts, got a dict; use [group]")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(
            f"params must be an iterable of Tensors or dicts, got {type(params).__name__}"
        ) from None
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    return params


def _check_params(params):
    if params is None:
        raise ValueError("a parameter group needs a 'params' entry")
    params = [params] if isinstance(params, Tensor) else _as_param_list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"optimizer can only optimize Tensors, but parameter {i} is a {type(p).__name__}"
            )
        if not p.is_leaf:
            raise ValueError(
                f"optimizer can't optimize a non-leaf Tensor (parameter {i}, shape {p.shape}); "
                "pass the leaf tensors that require grad"
            )
    return params


def clone(t):
    """A Tensor holding a copy of ``t``'s array (state must not alias the gradient)."""
    return Tensor(copy_array(t.data))


def _state_to_host(value):
    if isinstance(value, Tensor):
        return value.numpy()
    return np.array(value, dtype=np.int64)  # counters: a 0-d int64 array


def _check_saved(state_dict, n_groups):
    """(param_groups, {int index: entries}) of a saved state, its structure checked."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_state_dict expects a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"load_state_dict: the saved state has no {key!r} entry")
    groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
        raise ValueError("load_state_dict: 'param_groups' must be a list of dicts")
    if len(groups) != n_groups:
        raise ValueError(
            f"load_state_dict: the saved state has {len(groups)} parameter groups, "
            f"this optimizer has {n_groups}"
        )
    for i, group in enumerate(groups):
        params = group.get("params")
        if not isinstance(params, (list, tuple)) or not all(_is_index(j) for j in params):
            raise ValueError(f"load_state_dict: parameter group {i} has no list of 'params'")
    if not isinstance(saved_state, Mapping):
        # One error type (ValueError) for every malformed saved state, hence the noqa.
        raise ValueError("load_state_dict: 'state' must be a dict")  # noqa: TRY004
    state = {}
    for j, entries in saved_state.items():
        if not _is_index(j) or not isinstance(entries, Mapping):
            raise ValueError(f"load_state_dict: malformed state entry for parameter {j!r}")
        state[int(j)] = entries
    groups = [dict(g, params=[int(j) for j in g["params"]]) for g in groups]
    return groups, state


def _is_index(j):
    """An int, or an int written as a string (a checkpoint's JSON tree keeps either)."""
    if isinstance(j, str):
        return j.isdigit()
    return isinstance(j, (int, np.integer)) and not isinstance(j, bool)


def _state_to_param(owner, j, key, value, p):
    where = f"{owner}.load_state_dict: parameter {j}: state {key!r}"
    host = np.asarray(value.numpy() if isinstance(value, Tensor) else value)
    if host.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected a number or a numeric array, got dtype {host.dtype}")
    if key in _SCALAR_STATE:
        if host.size != 1:
            raise ValueError(f"{where}: expected a single counter, got shape {host.shape}")
        return int(host.reshape(()))  # also accepts torch's float32 0-d 'step'
    if tuple(host.shape) != p.shape:
        raise ValueError(
            f"{where} has shape {tuple(host.shape)}, its parameter has shape {p.shape}"
        )
    return tensor(host.astype(p.dtype, order="C"), dtype=p.dtype, device=p.device)


def _plain(value):
    """Python scalars/tuples from what ``mc.load`` may give back (0-d arrays, lists)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value
