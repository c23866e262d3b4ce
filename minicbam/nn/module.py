"""``Module``: the base class of layers and models, shaped like ``torch.nn.Module``.

A module keeps three ordered registries, filled by ``__setattr__`` as PyTorch does:
``_parameters`` (``Parameter`` or None), ``_buffers`` (state that is not learned, such as
BatchNorm's running statistics) and ``_modules`` (child modules). Everything else
(``named_parameters``, ``state_dict``, ``to``, ``train``) walks those registries, so a
subclass only assigns attributes in ``__init__`` and writes ``forward``. No hooks.

``state_dict()`` is a flat ``dict[str, numpy.ndarray]`` of host copies keyed like PyTorch's
(``layer1.0.bn1.running_mean``); ``load_state_dict`` validates every key and shape before it
copies anything, then copies into the existing arrays so that optimizers keep their
references.
"""

from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from minicbam import device
from minicbam.function import no_grad
from minicbam.kernels.strided import cast_array
from minicbam.nn._state_dict import converted, key_errors
from minicbam.nn.init import copy_into_
from minicbam.nn.parameter import Parameter
from minicbam.tensor import Tensor, check_dtype

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class: subclasses call ``super().__init__()`` first, then assign layers."""

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these registries to exist.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", {})

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function'
        )

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__ and isinstance(value, (Parameter, Module)):
            raise AttributeError(
                f"cannot assign {type(value).__name__} {name!r} before Module.__init__() call"
            )
        # Reassigning a registered name keeps its position (dicts keep the first insertion's
        # place), so named_parameters() and a Sequential's forward do not reorder; only a
        # name that changes registry moves, to the end of its new one. As PyTorch does.
        if isinstance(value, Parameter):
            self._forget(name, keep=self._parameters)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name, keep=self._modules)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                    "(nn.Parameter or None expected)"
                )
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as child module '{name}' "
                    "(nn.Module or None expected)"
                )
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                    "(Tensor or None expected)"
                )
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only reached when normal lookup fails: the registered entries.
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        if not self._forget(name):
            object.__delattr__(self, name)

    def _forget(self, name, keep=None):
        """Remove ``name`` from every registry (but ``keep``) and the instance dict; True if
        it was there. The registry that will receive the name is kept so it keeps its place."""
        found = False
        for registry in (self.__dict__, self._parameters, self._buffers, self._modules):
            if registry is keep:
                continue
            if name in registry:
                del registry[name]
                found = True
        self._non_persistent_buffers.discard(name)
        return found

    def _check_new_name(self, kind, name, registry):
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
        if name == "" or "." in name:
            raise KeyError(f"{kind} name can't be empty or contain '.', got {name!r}")
        if hasattr(self, name) and name not in registry:
            raise KeyError(f"attribute '{name}' already exists")

    def register_parameter(self, name, param):
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        self._check_new_name("parameter", name, self._parameters)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                "(nn.Parameter or None required)"
            )
        self._forget(name, keep=self._parameters)
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        self._check_new_name("buffer", name, self._buffers)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(
                f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' "
                "(Tensor or None required)"
            )
        self._forget(name, keep=self._buffers)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent_buffers.add(name)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._check_new_name("module", name, self._modules)
        self._forget(name, keep=self._modules)
        self._modules[name] = module

    register_module = add_module

    # ------------------------------------------------------------------ traversal
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                child_prefix = f"{prefix}.{name}" if prefix else name
                yield from child.named_modules(memo, child_prefix, remove_duplicate)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry, prefix, recurse, remove_duplicate=True):
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def get_submodule(self, target):
        module = self
        for name in target.split(".") if target else []:
            if name not in module._modules or module._modules[name] is None:
                raise AttributeError(f"{type(module).__name__} has no submodule `{name}`")
            module = module._modules[name]
        return module

    def num_parameters(self, trainable_only=False):
        """Total element count of the (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ state dict
    def _state_tensors(self, prefix=""):
        """Parameters and persistent buffers by state-dict key, in PyTorch's order."""
        out = {}
        for name, param in self._parameters.items():
            if param is not None:
                out[prefix + name] = param
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers:
                out[prefix + name] = buf
        for name, child in self._modules.items():
            if child is not None:
                out.update(child._state_tensors(prefix + name + "."))
        return out

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """A flat ``dict[str, numpy.ndarray]`` of host copies (Tensors if ``keep_vars``)."""
        destination = {} if destination is None else destination
        for key, t in self._state_tensors(prefix).items():
            destination[key] = t if keep_vars else t.numpy()
        return destination

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict``'s values into this module's parameters and buffers.

        Shape mismatches and values that are not numeric arrays (or do not convert to the
        tensor's dtype) always raise, naming the key; missing and unexpected keys raise when
        ``strict``. Every value is converted before the first copy, so a failure leaves the
        module as it was. Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"load_state_dict: expected state_dict to be dict-like, got "
                f"{type(state_dict).__name__}"
            )
        own = self._state_tensors()
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        hosts, errors = {}, []
        for key, t in own.items():
            if key in state_dict:
                host, error = converted(key, state_dict[key], t)
                if error is None:
                    hosts[key] = host
                else:
                    errors.append(error)
        if strict:
            errors = key_errors(missing, unexpected) + errors
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                + "\n\t".join(errors)
            )
        # Every value is already a contiguous array of its tensor's shape and dtype: the
        # copies below cannot fail half-way and leave the module partly loaded.
        for key, host in hosts.items():
            copy_into_(own[key], host)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ modes, devices
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")  # noqa: TRY004 - as torch
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for param in self.parameters():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad = Tensor(device.zeros(param.shape, param.dtype, param.device))

    def apply(self, fn):
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, *args, device=None, dtype=None):
        """``to(device)``, ``to(dtype)`` or ``to(device, dtype)``, in place; returns self.

        Tensors keep their identity (their arrays are replaced); ``dtype`` casts only
        floating-point parameters and buffers, so ``num_batches_tracked`` stays int64.
        """
        for arg in args:
            if isinstance(arg, str):
                device = arg
            else:
                dtype = arg
        target = None if device is None else _normalize_device(device)
        dtype = None if dtype is None else check_dtype("nn.Module.to", dtype, floating=True)
        if dtype is not None and not np.issubdtype(dtype, np.floating):
            raise TypeError(f"nn.Module.to only accepts floating point dtypes, got {dtype}")
        with no_grad():
            for t in self._all_tensors():
                _convert_(t, target, dtype)
                if t.grad is not None:
                    _convert_(t.grad, target, dtype)
        return self

    def _all_tensors(self):
        for module in self.modules():
            for registry in (module._parameters, module._buffers):
                yield from (t for t in registry.values() if t is not None)

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ------------------------------------------------------------------ printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [line for line in self.extra_repr().split("\n") if line]
        for name, child in self._modules.items():
            child_repr = _indent(repr(child), 2)
            lines.append(f"({name}): {child_repr}")
        head = type(self).__name__ + "("
        if not self._modules and len(lines) <= 1:
            return head + "".join(lines) + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        names = list(super().__dir__())
        names += list(self._parameters) + list(self._buffers) + list(self._modules)
        return sorted(set(names))


# ----------------------------------------------------------------------------- helpers
def _normalize_device(name):
    # Module.to's ``device`` argument shadows the device module inside it.
    return device.normalize_device(name)


def _convert_(t, target, dtype):
    """Move/cast ``t``'s array in place (the Tensor object itself is kept)."""
    array = t.data
    if dtype is not None and np.issubdtype(t.dtype, np.floating) and t.dtype != dtype:
        array = cast_array(array, dtype)
    if target is not None:
        array = device.to_device(array, target)
    t.data = array


def _indent(text, spaces):
    lines = text.split("\n")
    return "\n".join([lines[0]] + [" " * spaces + line for line in lines[1:]])
