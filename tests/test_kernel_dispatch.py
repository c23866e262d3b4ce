"""Kernel dispatch on the CPU: with ``serial_small``, small inputs take a serial twin of a
parallel kernel unless its parallel version was compiled first; every path gives the same
results and IEEE division by zero."""

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
    twin = kernel._serial
    assert twin is not None and twin.targetoptions.get("parallel") is None
    np.testing.assert_array_equal(_run(kernel, *big), big[0] / big[1])  # the parallel kernel
    np.testing.assert_array_equal(_run(kernel, *small), small[0] / small[1])
    assert kernel._serial is twin


def test_large_inputs_first_keep_the_parallel_version_for_small_ones():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func), serial_small=True)
    big = np.random.default_rng(1).uniform(1, 2, (2, BIG))
    np.testing.assert_array_equal(_run(kernel, *big), big[0] / big[1])
    np.testing.assert_array_equal(_run(kernel, big[0, :5], big[1, :5]), big[0, :5] / big[1, :5])
    assert kernel._serial is None


def test_serial_twin_divides_by_zero_as_ieee():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func), serial_small=True)
    y = _run(kernel, np.array([1.0, -1.0, 0.0]), np.zeros(3))
    assert kernel._serial is not None
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2])


def test_without_serial_small_no_twin_is_built():
    kernel = Kernel(cpu=njit(parallel=True)(_divide.py_func))
    x = np.array([1.0, 4.0])
    np.testing.assert_array_equal(_run(kernel, x, x), [1.0, 1.0])
    assert kernel._serial is None
