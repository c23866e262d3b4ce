"""Containers: ``Sequential`` (a pipeline) and ``ModuleList`` (an indexable list of modules).

Children are registered under the string keys "0", "1", ... so that state-dict keys read
``features.0.weight`` exactly as in PyTorch. Positions are what a container is about, so:

* ``c[i] = m`` replaces the child in place (``Module.__setattr__`` keeps a name's place);
* ``del c[i]`` / ``del c[a:b]`` / ``pop`` renumber the rest "0".."n-1" (a ``Sequential``
  built from an ``OrderedDict`` loses its names there, as in PyTorch), so a later
  ``append`` never lands on an existing key;
* ``insert`` shifts the later children up by one;
* indices are integers (``operator.index``: a float raises ``TypeError``), negative ones
  count from the end, and a non-Module child raises ``TypeError``.

Deliberate differences from PyTorch: ``ModuleList.insert`` follows ``list.insert`` for
negative and past-the-end indices (PyTorch raises ``KeyError`` for a negative one and
leaves a gap in the keys for a large one); ``Sequential.insert`` of a non-Module raises
``TypeError`` (PyTorch: ``AssertionError``); ``append`` refuses to overwrite an existing
key (possible in PyTorch for a ``Sequential`` whose ``OrderedDict`` names look like
numbers).
"""

import operator
from collections import OrderedDict
from collections.abc import Iterable

from minicbam.nn.module import Module


def _index(i, length, kind):
    """``i`` as a non-negative index into a container of ``length`` items."""
    i = operator.index(i)
    if not -length <= i < length:
        raise IndexError(f"index {i} is out of range for a {kind} of length {length}")
    return i % length


def _check_module(module, kind):
    if not isinstance(module, Module):
        raise TypeError(f"{kind}: {type(module).__name__} is not a Module subclass")
    return module


class _Container(Module):
    """What ``Sequential`` and ``ModuleList`` share: positional access to ``_modules``."""

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _key(self, idx):
        return list(self._modules)[_index(idx, len(self), type(self).__name__)]

    def __setitem__(self, idx, module):
        setattr(self, self._key(idx), module)  # keeps the child's place

    def __delitem__(self, idx):
        keys = list(self._modules)
        doomed = keys[idx] if isinstance(idx, slice) else [self._key(idx)]
        for key in doomed:
            delattr(self, key)
        self._renumber(list(self._modules.values()))

    def _renumber(self, modules):
        """Re-register ``modules`` under the keys "0".."n-1", in order."""
        self._modules.clear()
        for i, module in enumerate(modules):
            self._modules[str(i)] = module

    def append(self, module):
        key = str(len(self))
        if key in self._modules:
            raise KeyError(
                f"{type(self).__name__}.append: the key {key!r} is already a child's name"
            )
        self.add_module(key, _check_module(module, f"{type(self).__name__}.append"))
        return self

    def extend(self, modules):
        if not isinstance(modules, Iterable):
            raise TypeError(
                f"{type(self).__name__}.extend should be called with an iterable, "
                f"but got {type(modules).__name__}"
            )
        for module in list(modules):  # list(): extending a container with itself
            self.append(module)
        return self

    def pop(self, idx=-1):
        module = self[idx]
        del self[idx]
        return module


class Sequential(_Container):
    """``Sequential(m0, m1, ...)`` or ``Sequential(OrderedDict(name=module))``."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], (dict, OrderedDict)):
            for name, module in args[0].items():
                self.add_module(name, _check_module(module, "Sequential"))
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), _check_module(module, "Sequential"))

    def forward(self, input):
        for module in self._modules.values():
            input = module(input)
        return input

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._key(idx)]

    def insert(self, index, module):
        """Put ``module`` at ``index`` (-n <= index <= n, as PyTorch checks)."""
        _check_module(module, "Sequential.insert")
        n = len(self)
        index = operator.index(index)
        if not -n <= index <= n:
            raise IndexError(f"Sequential.insert: index {index} is out of range for length {n}")
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._renumber(modules)
        return self

    def __add__(self, other):
        if not isinstance(other, Sequential):
            raise ValueError(  # noqa: TRY004 - PyTorch raises ValueError here
                "add operator supports only objects of Sequential class, "
                f"but {type(other).__name__} is given"
            )
        return Sequential(*self, *other)

    def __iadd__(self, other):
        if not isinstance(other, Sequential):
            raise ValueError(  # noqa: TRY004 - PyTorch raises ValueError here
                "add operator supports only objects of Sequential class, "
                f"but {type(other).__name__} is given"
            )
        return self.extend(other)

    def __mul__(self, other):
        count = operator.index(other)
        if count <= 0:
            raise ValueError(f"non-positive multiplication factor {count} for Sequential")
        return Sequential(*(list(self) * count))  # the same modules, repeated (as PyTorch)

    __rmul__ = __mul__

    def __imul__(self, other):
        repeated = self * other
        self._renumber(list(repeated))
        return self


class ModuleList(_Container):
    """A list of modules whose parameters all belong to the owner; it has no ``forward``."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._key(idx)]

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        return ModuleList(list(self) + list(other))

    def insert(self, index, module):
        """``list.insert`` semantics: negative counts from the end, past the end appends."""
        _check_module(module, "ModuleList.insert")
        modules = list(self._modules.values())
        modules.insert(operator.index(index), module)
        self._renumber(modules)
        return self
