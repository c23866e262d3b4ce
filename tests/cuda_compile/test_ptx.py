"""Every CUDA kernel compiles for a real GPU (sm_80 PTX), checked without a GPU.

The simulator runs kernels as Python, so it accepts code the GPU compiler rejects
(docs/design.md, "Testing CUDA without a GPU"). Here a CPU workload that touches every op runs with
``device.recorded_calls`` on; each recorded (kernel, argument types) pair is then compiled
by ``numba.cuda.compile_ptx`` from the kernel's CUDA launcher. Launchers pass the Kernel's
arguments unchanged (device.launcher), so the CPU types are the CUDA types; a staged
launcher (a two-stage reduction) is asked for its GPU plan, and each stage's kernel is
compiled for that stage's arguments.

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
    """(Kernel, CUDA kernel, argument types) of every distinct launch the workload's calls
    would make on a GPU: the Kernel's own arguments, or for a staged launcher (two-stage
    reductions) each stage's kernel and arguments as its GPU plan makes them for the
    recorded CPU arrays (scratch buffers come out as NumPy arrays)."""
    device.recorded_calls = []
    try:
        for dtype in (np.float32, np.float64):
            run_all_ops(dtype)
        calls = device.recorded_calls
    finally:
        device.recorded_calls = None
    launchers, unique = {}, {}
    for kernel, args in calls:
        if id(kernel) not in launchers:
            launchers[id(kernel)] = kernel.cuda_factory()
        launch = launchers[id(kernel)]
        if hasattr(launch, "stages"):
            launches = [(k, kargs) for k, *_, kargs in launch.stages(*args)]
        else:
            launches = [(launch.kernel, args)]
        for cuda_kernel, kargs in launches:
            sig = tuple(typeof(a) for a in kargs)
            # the most launches any call with this signature made (a one-stage plan and a
            # stage of a two-stage one can share types)
            stages = max(len(launches), unique.get((id(cuda_kernel), sig), (0, 0, 0, 0))[3])
            unique[(id(cuda_kernel), sig)] = (kernel, cuda_kernel, sig, stages)
    return list(unique.values())


@pytest.fixture(autouse=True)
def fake_compute_capability(monkeypatch):
    # Typing a kernel that calls a device function asks the current device for its
    # compute capability, which fails without a driver (docs/design.md, "Testing CUDA without a GPU").
    from numba.cuda import dispatcher

    class Device:
        compute_capability = (8, 0)

    monkeypatch.setattr(dispatcher, "get_current_device", lambda: Device())


def _ptx(cuda_kernel, sig):
    return cuda.compile_ptx(cuda_kernel.py_func, sig, cc=(8, 0))[0]


def test_workload_reaches_many_kernels(recorded):
    assert len({id(k) for k, *_ in recorded}) >= 20


def test_workload_reaches_both_stages_of_the_reductions(recorded):
    # sums (rows and columns), maxima and bias gradients long enough for two launches
    staged = {kernel.name for kernel, _, _, stages in recorded if stages == 2}
    assert len(staged) >= 4, staged


def test_every_kernel_compiles_for_sm80(recorded):
    failures = []
    for kernel, cuda_kernel, sig, _ in recorded:
        try:
            _ptx(cuda_kernel, sig)
        except Exception as exc:  # collect all, report together
            failures.append(f"{kernel.name} {sig}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


def test_float32_kernels_do_no_float64_math(recorded):
    offenders = []
    for kernel, cuda_kernel, sig, _ in recorded:
        is_f32 = any(getattr(t, "dtype", None) == typeof(np.float32(0)) for t in sig)
        has_f64 = any(getattr(t, "dtype", None) == typeof(np.float64(0)) for t in sig)
        if not is_f32 or has_f64 or kernel.float64_math:
            continue
        if ".f64" in _ptx(cuda_kernel, sig):
            offenders.append(f"{kernel.name} {sig}")
    assert not offenders, "float64 instructions in float32 kernels:\n" + "\n".join(offenders)
