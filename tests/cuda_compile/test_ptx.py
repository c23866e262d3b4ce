"""Every CUDA kernel compiles for a real GPU (sm_80 PTX), checked without a GPU.

The simulator runs kernels as Python, so it accepts code the GPU compiler rejects
(docs/design.md, "Testing CUDA without a GPU"). Here a CPU workload that touches every op runs with
``device.recorded_calls`` on; each recorded (kernel, argument types) pair is then compiled
by ``numba.cuda.compile_ptx`` from the kernel's CUDA launcher. Launchers pass the Kernel's
arguments unchanged (device.launcher), so the CPU types are the CUDA types.

A float32 kernel must not do float64 arithmetic (silent and slow on GPUs) unless its
Kernel says ``float64_math=True`` (reductions that accumulate in float64 on purpose).
"""

import numpy as np
import pytest
from numba import typeof
from workloads import run_all_ops

from minicbam import device

cuda = pytest.importorskip("numba.cuda")


@pytest.fixture(scope="module")
def recorded():
    device.recorded_calls = []
    try:
        for dtype in (np.float32, np.float64):
            run_all_ops(dtype)
        calls = device.recorded_calls
    finally:
        device.recorded_calls = None
    unique = {}
    for kernel, args in calls:
        sig = tuple(typeof(a) for a in args)
        unique.setdefault((id(kernel), sig), (kernel, sig))
    return list(unique.values())


@pytest.fixture(autouse=True)
def fake_compute_capability(monkeypatch):
    # Typing a kernel that calls a device function asks the current device for its
    # compute capability, which fails without a driver (docs/design.md, "Testing CUDA without a GPU").
    from numba.cuda import dispatcher

    class Device:
        compute_capability = (8, 0)

    monkeypatch.setattr(dispatcher, "get_current_device", lambda: Device())


def _ptx(kernel, sig):
    launch = kernel.cuda_factory()
    return cuda.compile_ptx(launch.kernel.py_func, sig, cc=(8, 0))[0]


def test_workload_reaches_many_kernels(recorded):
    assert len({id(k) for k, _ in recorded}) >= 20


def test_every_kernel_compiles_for_sm80(recorded):
    failures = []
    for kernel, sig in recorded:
        try:
            _ptx(kernel, sig)
        except Exception as exc:  # collect all, report together
            failures.append(f"{kernel.name} {sig}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


def test_float32_kernels_do_no_float64_math(recorded):
    offenders = []
    for kernel, sig in recorded:
        is_f32 = any(getattr(t, "dtype", None) == typeof(np.float32(0)) for t in sig)
        has_f64 = any(getattr(t, "dtype", None) == typeof(np.float64(0)) for t in sig)
        if not is_f32 or has_f64 or kernel.float64_math:
            continue
        if ".f64" in _ptx(kernel, sig):
            offenders.append(f"{kernel.name} {sig}")
    assert not offenders, "float64 instructions in float32 kernels:\n" + "\n".join(offenders)
