"""Test set-up: CUDA simulator by default, hypothesis profiles, import path.

``NUMBA_ENABLE_CUDASIM`` is read once, when numba is imported, so it is set here before
anything imports numba. On a machine with a GPU run ``NUMBA_ENABLE_CUDASIM=0 pytest``.
"""

import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and tests/helpers.py

import pytest
from hypothesis import HealthCheck, settings


def _lock_simulator_shared_arrays():
    """The simulator's ``cuda.shared.array`` looks a block's array up by source line and,
    when missing, creates it, without a lock (numba-cuda 0.30, simulator/kernelapi.py): two
    threads of a block can both create one and then write to different arrays, which now
    and then gives a block reduction a wrong result. Same lookup, under a lock."""
    import threading
    import traceback

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or an error
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1])[0:2]
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
    # The simulator runs one Python thread per CUDA thread; a short GIL switch interval
    # makes syncthreads-heavy kernels 3-8x faster (docs/design.md, "Testing CUDA without a GPU").
    sys.setswitchinterval(1e-4)
    _lock_simulator_shared_arrays()

# deadline=None: the first call of a kernel compiles it, which takes seconds.
_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=10, **_common)
settings.register_profile("ci", max_examples=20, derandomize=True, **_common)
settings.register_profile("intense", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    from minicbam.device import cuda_is_available

    if cuda_is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device and NUMBA_ENABLE_CUDASIM is not 1")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
