"""Kernel dispatch on the CPU: small inputs take the serial twin of a parallel kernel, large
ones the parallel kernel; both give NumPy's results and IEEE division by zero."""

import numpy as np

import minicbam as mc
from minicbam import device
from minicbam.ops.binary import add_kernel, div_kernel


def test_small_inputs_run_the_serial_twin_with_the_same_results():
    rng = np.random.default_rng(0)
    for size in (7, device.PARALLEL_MIN_ELEMENTS + 5):  # serial, then parallel
        a, b = rng.standard_normal(size), rng.standard_normal(size)
        np.testing.assert_array_equal((mc.tensor(a) + mc.tensor(b)).numpy(), a + b)
    assert add_kernel._serial is not None and add_kernel._serial is not add_kernel.cpu
    assert add_kernel._serial.targetoptions.get("parallel") is None


def test_serial_twin_divides_by_zero_as_ieee():
    x = mc.tensor(np.array([1.0, -1.0, 0.0]))
    y = (x / mc.tensor(np.zeros(3))).numpy()
    assert div_kernel._serial is not None
    assert y[0] == np.inf and y[1] == -np.inf and np.isnan(y[2])
