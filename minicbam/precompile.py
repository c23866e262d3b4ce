"""Fill numba's kernel cache ahead of a run, on more than one process.

numba compiles a kernel on its first call, one kernel after another, on one core: a first
run of ``minicbam train`` spends most of its time there. Compiling is single-threaded, so
a second process can compile half of the kernels at the same time, and both halves land
in the on-disk cache (``minicbam.kernel_cache``) that the run then loads.

Two steps:

``record_compiles()``
    While it is active, a call of a jitted function that would compile instead records
    ``(dispatcher, argument types)`` and returns 0 without running anything. Running one
    training step through it (a *dry run*: every kernel a no-op, every value garbage)
    lists the kernels, and the signatures, that the real step will compile.

``compile_claimed(entries, claim_dir, reverse)``
    Compiles the recorded entries that this process claims. Each process (one going
    forwards through the list, one backwards) claims a kernel by creating
    ``claim_dir/<index key>`` with ``O_CREAT | O_EXCL``, which exactly one process can do.

Why the claim is per *function*, not per signature: numba keeps one index file per
function (module, qualified name: the closures one factory makes share it), mapping each
signature to a data file, and saves a new entry by reading the index, adding to it and
writing it back. Two processes saving two signatures of one function at once can each
write the index the other did not see, and the index can then name the other
signature's machine code for a signature: a wrong kernel, silently. So all signatures of
one function are compiled by one process, and no cached function is compiled as a callee
of two others (minicbam's nested helpers are ``register_jitable`` or not cached).
"""

import contextlib
import os
import re

__all__ = ["claim", "compile_claimed", "group_by_index", "index_key", "record_compiles"]


def index_key(dispatcher):
    """The name of the cache index a dispatcher saves to: module and qualified name."""
    fn = dispatcher.py_func
    return f"{fn.__module__}.{fn.__qualname__}"


def _skip(*args, **kwargs):
    return 0


@contextlib.contextmanager
def record_compiles():
    """Yield a list that fills, in first-call order, with ``(dispatcher, argtypes)`` for
    every call that would compile; such a call runs nothing and returns 0.

    numba's C dispatcher calls ``_compile_for_args`` when no compiled version matches the
    arguments and then calls whatever it returns, so replacing that method (for every
    dispatcher, while the context lasts) is enough. Calls that match a version already
    compiled or loaded run as usual."""
    from numba.core import dispatcher as numba_dispatcher
    from numba.core import types

    entries, seen = [], set()
    original = numba_dispatcher._DispatcherBase._compile_for_args

    def record(self, *args, **kws):
        argtypes = tuple(
            types.Omitted(a.value)
            if isinstance(a, numba_dispatcher.OmittedArg)
            else self.typeof_pyval(a)
            for a in args
        )
        if (id(self), argtypes) not in seen:
            seen.add((id(self), argtypes))
            entries.append((self, argtypes))
        return _skip

    numba_dispatcher._DispatcherBase._compile_for_args = record
    try:
        yield entries
    finally:
        numba_dispatcher._DispatcherBase._compile_for_args = original


def group_by_index(entries):
    """``[(key, [(dispatcher, argtypes), ...]), ...]``, keys in first-appearance order."""
    groups = {}
    for dispatcher, argtypes in entries:
        groups.setdefault(index_key(dispatcher), []).append((dispatcher, argtypes))
    return list(groups.items())


def claim(claim_dir, key):
    """True for the one process whose call creates ``claim_dir/key``."""
    try:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", key)  # "f.<locals>.g" -> "f._locals_.g"
        fd = os.open(os.path.join(claim_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def compile_claimed(entries, claim_dir, reverse=False, stop=None):
    """Compile (into the cache) every function of ``entries`` this process claims, all of
    its recorded signatures; go through the functions backwards with ``reverse``; end
    early once ``stop()`` is true (checked before each function). Returns the keys
    compiled here. A signature that fails to compile is left for the run, which compiles
    it (and raises its error) on its first call."""
    groups = group_by_index(entries)
    done = []
    for key, group in reversed(groups) if reverse else groups:
        if stop is not None and stop():
            break
        if not claim(claim_dir, key):
            continue
        for dispatcher, argtypes in group:
            try:
                dispatcher.compile(argtypes)
            except Exception:  # noqa: BLE001, S110 - the real call reports it
                pass
        done.append(key)
    return done
