"""Kernel dispatch on the CPU: with ``serial_small`` (or ``parallel_from``), inputs below the
kernel's size take a serial twin of its parallel kernel and larger ones the parallel kernel;
every path gives the same results and IEEE division by zero."""

import numpy as np
from numba import njit, prange

from minicbam import device
from minicbam.device import Kernel

BIG = device.PARALLEL_MIN_ELEMENTS + 5


@njit(parallel=True)
def _divide(out, x, y):
    for i in prange(out.size):
        out[i] = x[i] / y[i]


def _run(kernel, x, y):
    out = np.empty_like(x)
    kernel(out, x, y)
    return out


def test_small_inputs_first_build_the_serial_twin_and_keep_it():
    kernel = Kernel(cpu=_divide, serial_small=True)
    rng = np.random.default_rng(0)
    small, big = rng.standard_normal((2, 7)), rng.uniform(1, 2, (2, BIG))
    np.testing.assert_array_equal(_run(kernel, *small), small[0] / small[1])
    twin = kernel.serial_cpu
    assert twin is not None and twin.targetoptions.get("parallel") is None
    np.testing.assert_array_equal(_run(kernel, *big), big[0] / big[1])  # the parallel kernel
    np.testing.assert_array_equal(_run(kernel, *small), small[0] / small[1])
    assert kernel.serial_cpu is twin


def test_large_inputs_take_the_parallel_version_and_small_ones_the_twin():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func), serial_small=True)
    big = np.random.default_rng(1).uniform(1, 2, (2, BIG))
    np.testing.assert_array_equal(_run(kernel, *big), big[0] / big[1])
    assert kernel.serial_cpu is None and len(kernel.cpu.signatures) == 1
    # a small input of another dtype compiles the serial twin, not a second parallel version
    small = big[:, :5].astype(np.float32)
    np.testing.assert_array_equal(_run(kernel, *small), small[0] / small[1])
    assert kernel.serial_cpu is not None and len(kernel.cpu.signatures) == 1


def test_parallel_from_sets_the_size_where_the_parallel_version_starts():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func), parallel_from=100)
    x = np.random.default_rng(2).uniform(1, 2, (2, 100))
    np.testing.assert_array_equal(_run(kernel, x[0, :99], x[1, :99]), x[0, :99] / x[1, :99])
    assert kernel.serial_cpu is not None and not kernel.cpu.signatures  # no parallel compile
    np.testing.assert_array_equal(_run(kernel, *x), x[0] / x[1])
    assert len(kernel.cpu.signatures) == 1
    assert len(kernel.serial_cpu.signatures) == 1  # the large call did not use the twin


def test_serial_twin_divides_by_zero_as_ieee():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func), serial_small=True)
    y = _run(kernel, np.array([1.0, -1.0, 0.0]), np.zeros(3))
    assert kernel.serial_cpu is not None
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2])


def test_without_serial_small_no_twin_is_built():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func))
    x = np.array([1.0, 4.0])
    np.testing.assert_array_equal(_run(kernel, x, x), [1.0, 1.0])
    assert kernel.serial_cpu is None
