"""minicbam.precompile: recording what a call would compile, and compiling claimed
functions; the invariant that keeps two compiling processes off each other's cache index."""

import importlib
import inspect
import os
import pkgutil

import numpy as np
from numba import njit
from numba.core.caching import NullCache
from numba.core.dispatcher import Dispatcher

import minicbam
from minicbam import precompile


def _fresh_add():
    @njit
    def add(a, b):
        return a + b

    return add


def _fresh_fill():
    @njit
    def fill(out, value):
        out[:] = value

    return fill


def test_record_compiles_records_and_skips_calls_that_would_compile():
    add, fill = _fresh_add(), _fresh_fill()
    add(1, 2)  # compiled before: runs even while recording
    out = np.zeros(3)
    with precompile.record_compiles() as entries:
        assert add(1, 2) == 3
        assert add(1.5, 2.0) == 0  # would compile (float64): skipped
        assert fill(out, 7.0) == 0
        fill(out, 8.0)  # same signature again: recorded once
    assert not out.any()  # nothing ran
    assert [(d, tuple(str(t) for t in sig)) for d, sig in entries] == [
        (add, ("float64", "float64")),
        (fill, ("array(float64, 1d, C)", "float64")),
    ]
    assert len(add.signatures) == 1 and not fill.signatures  # nothing compiled
    fill(out, 9.0)  # after the context: numba compiles as usual
    assert (out == 9.0).all()


def test_record_compiles_restores_numba_after_an_error():
    add = _fresh_add()
    try:
        with precompile.record_compiles():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert add(2, 3) == 5


def _make_closures():
    kernels = []
    for k in (1, 2):

        @njit
        def scaled(x, k=k):
            return x * k

        kernels.append(scaled)
    return kernels


def test_closures_of_one_factory_share_an_index_key():
    first, second = _make_closures()
    entries = [(first, ("a",)), (_fresh_add(), ("b",)), (second, ("c",))]
    groups = precompile.group_by_index(entries)
    assert [key for key, _ in groups] == [
        precompile.index_key(first),
        precompile.index_key(entries[1][0]),
    ]
    assert groups[0][1] == [(first, ("a",)), (second, ("c",))]


def test_claim_is_granted_once(tmp_path):
    assert precompile.claim(str(tmp_path), "m.f.<locals>.g")
    assert not precompile.claim(str(tmp_path), "m.f.<locals>.g")
    assert precompile.claim(str(tmp_path), "m.h")
    assert sorted(os.listdir(tmp_path)) == ["m.f._locals_.g", "m.h"]


def test_compile_claimed_compiles_every_signature_of_its_unclaimed_functions(tmp_path):
    add, fill = _fresh_add(), _fresh_fill()
    with precompile.record_compiles() as entries:
        add(1, 2)
        add(1.0, 2.0)
        fill(np.zeros(2), 1.0)
    precompile.claim(str(tmp_path), precompile.index_key(fill))  # "the other process"
    done = precompile.compile_claimed(entries, str(tmp_path), reverse=True)
    assert done == [precompile.index_key(add)]
    assert len(add.signatures) == 2 and not fill.signatures
    assert precompile.compile_claimed(entries, str(tmp_path)) == []  # all claimed now


def test_compile_claimed_goes_backwards_with_reverse(tmp_path):
    add, fill = _fresh_add(), _fresh_fill()
    with precompile.record_compiles() as entries:
        add(1, 2)
        fill(np.zeros(2), 1.0)
    assert precompile.compile_claimed(entries, str(tmp_path), reverse=True) == [
        precompile.index_key(fill),
        precompile.index_key(add),
    ]


def _minicbam_dispatchers():
    """Every njit dispatcher at module level of minicbam (Kernel objects' CPU ones too)."""
    found = {}
    for info in pkgutil.walk_packages(minicbam.__path__, "minicbam."):
        if info.name.endswith("__main__"):  # runs the command line
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (mpi4py): not a kernel module
            continue
        for value in vars(module).values():
            candidate = getattr(value, "cpu", value)
            if isinstance(candidate, Dispatcher):
                found[id(candidate)] = candidate
    return list(found.values())


def _code_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _code_names(const)
    return names


def test_no_cached_kernel_is_the_callee_of_another_kernel():
    """A cached callee is saved by every process that compiles one of its callers: two
    such processes would write its cache index at once (minicbam/precompile.py)."""
    dispatchers = _minicbam_dispatchers()
    assert len(dispatchers) > 50
    offenders = []
    for caller in dispatchers:
        fn = caller.py_func
        callees = {name: fn.__globals__.get(name) for name in _code_names(fn.__code__)}
        cells = zip(fn.__code__.co_freevars, fn.__closure__ or ())
        callees.update((name, cell.cell_contents) for name, cell in cells)  # factory kernels
        for name, callee in callees.items():
            if isinstance(callee, Dispatcher) and not isinstance(callee._cache, NullCache):
                offenders.append(f"{precompile.index_key(caller)} calls {name}")
    assert offenders == []


def test_compile_claimed_stops_when_told(tmp_path):
    add, fill = _fresh_add(), _fresh_fill()
    with precompile.record_compiles() as entries:
        add(1, 2)
        fill(np.zeros(2), 1.0)
    asked = []
    stop = lambda: asked.append(1) or len(asked) > 1  # stop before the second function
    assert precompile.compile_claimed(entries, str(tmp_path), stop=stop) == [
        precompile.index_key(add)
    ]
    assert not fill.signatures
