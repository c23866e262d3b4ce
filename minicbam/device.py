"""Devices: where arrays live, and the only module that allocates or moves them.

"cpu" arrays are C-contiguous NumPy arrays; "cuda" arrays are numba ``DeviceNDArray``s
(``FakeCUDAArray``s under the simulator, ``NUMBA_ENABLE_CUDASIM=1``).

A ``Kernel`` pairs a CPU implementation with a CUDA one and picks between them from where
its output buffer lives: ``k(out, *args)``. The CUDA side is a *factory* that builds and
returns a launcher on first use, so importing minicbam never imports ``numba.cuda`` (it
costs ~0.4 s) and no CUDA kernel compiles before it is needed.
"""

import functools
import math

import numpy as np

CPU = "cpu"
CUDA = "cuda"

# Launch shapes. Under the simulator every CUDA thread is a Python thread, so a grid-stride
# loop over a few threads is ~100x faster than one thread per element (docs/design.md, "Testing CUDA without a GPU").
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096
SIM_THREADS_PER_BLOCK = 32
SIM_MAX_BLOCKS = 1

_backend = None


def cuda_backend():
    """'sim' (numba's CUDA simulator), 'gpu' (a usable device) or 'none'."""
    global _backend
    if _backend is None:
        _backend = _detect_backend()
    return _backend


def _detect_backend():
    from numba.core import config

    if config.ENABLE_CUDASIM:  # read once, when numba was imported
        return "sim"
    try:
        from numba import cuda

        return "gpu" if cuda.is_available() else "none"
    except Exception:  # a broken driver install counts as no GPU
        return "none"


def cuda_is_available():
    return cuda_backend() != "none"


def normalize_device(device):
    """'cpu' or 'cuda' from 'cpu', 'cuda', 'cuda:0' or a Device-like string."""
    name = str(device)
    if name == CPU:
        return CPU
    if name in (CUDA, "cuda:0"):
        if not cuda_is_available():
            raise RuntimeError(
                "device 'cuda' requested but no CUDA GPU is available "
                "(set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the simulator)"
            )
        return CUDA
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def device_of(array):
    return CPU if isinstance(array, np.ndarray) else CUDA


def cuda_module():
    """``numba.cuda``, imported on first use."""
    from numba import cuda

    return cuda


def cuda_factory(factory):
    """Decorator for a Kernel's CUDA factory: before the factory first runs, bind the
    module-level name ``cuda`` of the factory's module to ``numba.cuda``.

    Kernels refer to ``cuda.grid``, ``cuda.shared.array``, ... through that module global:
    numba resolves it when it compiles, and the simulator swaps globals that are the cuda
    module for its fake one. Binding it lazily keeps ``import minicbam`` from importing
    ``numba.cuda`` (~0.4 s)."""

    @functools.wraps(factory)
    def build(*args):
        factory.__globals__["cuda"] = cuda_module()
        return factory(*args)

    return build


# ----------------------------------------------------------------------------- allocation
def empty(shape, dtype, device):
    shape = tuple(int(s) for s in shape)
    if device == CPU:
        return np.empty(shape, dtype=dtype)
    return cuda_module().device_array(shape, dtype=np.dtype(dtype))


def full(shape, value, dtype, device):
    out = empty(shape, dtype, device)
    if device == CPU:
        out.fill(value)
    else:
        fill_kernel(out.reshape(out.size) if out.size else out, value)
    return out


def zeros(shape, dtype, device):
    return full(shape, 0, dtype, device)


def to_device(array, device):
    """A copy of ``array`` (NumPy or CUDA) on ``device``; the same object if already there."""
    if device_of(array) == device:
        return array
    if device == CPU:
        return array.copy_to_host()
    # ascontiguousarray makes 0-d arrays 1-d; reshape keeps the shape
    return cuda_module().to_device(np.ascontiguousarray(array).reshape(array.shape))


def copy(array):
    """A new array with the same contents, on the same device."""
    if isinstance(array, np.ndarray):
        return array.copy()
    out = cuda_module().device_array(array.shape, dtype=array.dtype)
    out.copy_to_device(array)
    return out


def to_host(array):
    """A NumPy copy of any array."""
    if isinstance(array, np.ndarray):
        return array.copy()
    return array.copy_to_host()


def flat(array):
    """A 1-D view of a C-contiguous array (NumPy or CUDA)."""
    return array.reshape(array.size)


# ----------------------------------------------------------------------------- launching
def launch_config(n):
    """(blocks, threads) for a grid-stride loop over ``n`` items."""
    if cuda_backend() == "sim":
        return SIM_MAX_BLOCKS, SIM_THREADS_PER_BLOCK
    blocks = min(MAX_BLOCKS, max(1, math.ceil(n / THREADS_PER_BLOCK)))
    return blocks, THREADS_PER_BLOCK


def launcher(kernel, items=None, config=None):
    """``launch(out, *args)`` running ``kernel[blocks, threads](out, *args)``.

    The kernel receives exactly the Kernel's arguments (the PTX compile check in
    tests/cuda_compile relies on it). ``items(out, *args)`` gives the number of work items
    of a grid-stride loop (default ``out.size``); ``config(out, *args)`` instead returns
    ``(blocks, threads)`` directly, for kernels with 2-D blocks or shared-memory tiles.
    """

    def launch(out, *args):
        if config is not None:
            blocks, threads = config(out, *args)
        else:
            blocks, threads = launch_config(out.size if items is None else items(out, *args))
        kernel[blocks, threads](out, *args)

    launch.kernel = kernel
    return launch


def grid_stride_launcher(kernel):
    """Launch ``kernel(out, *args)`` with enough threads for ``out.size`` items."""
    return launcher(kernel)


# Below this many elements a CPU kernel runs its parallel loop on one thread: waking the
# other thread costs ~10 us on an idle machine and ~150 us on a loaded one, more than the
# work itself (measured on the 2-core machine).
PARALLEL_MIN_ELEMENTS = 1 << 15


def _largest_array(out, args):
    largest = out.size
    for a in args:
        if isinstance(a, np.ndarray) and a.size > largest:
            largest = a.size
    return largest


def serial_twin(dispatcher):
    """``dispatcher``'s function compiled without ``parallel=True`` (other options kept).

    A small input then skips numba's parallel launch and the thread-count switch around it
    (together ~10-40 us per call, more than the work), and a kernel that only ever sees
    small inputs never compiles its parallel version (~3x slower to compile). The twin is
    a copy of the function under its own name: numba's cache keys entries by qualified name
    and signature, not by options, so the two versions need distinct names."""
    import types

    import numba

    fn = dispatcher.py_func
    twin = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__
    )
    twin.__qualname__ = fn.__qualname__ + "_serial"
    options = {
        k: v for k, v in dispatcher.targetoptions.items() if k not in ("parallel", "nopython")
    }
    # parallel=True implies numpy's error model (x / 0 gives inf, as on the GPU); keep it
    options.setdefault("error_model", "numpy")
    return numba.njit(cache=True, **options)(twin)


def _run_single_threaded(fn, out, args):
    import numba

    threads = numba.get_num_threads()
    if threads == 1:
        return fn(out, *args)
    numba.set_num_threads(1)
    try:
        return fn(out, *args)
    finally:
        numba.set_num_threads(threads)


# When a list, every CPU Kernel call appends (kernel, args) to it: the PTX compile check
# replays those argument types through the CUDA kernels (tests/cuda_compile).
recorded_calls = None


class Kernel:
    """A CPU implementation and a CUDA implementation of the same computation.

    ``cpu(out, *args)`` is usually an ``@njit`` function; ``cuda`` is a zero-argument factory
    that returns ``launch(out, *args)`` (see ``launcher``); it runs once, on the first CUDA
    call. ``float64_math=True`` declares that the kernel accumulates in float64 on purpose.
    """

    def __init__(self, cpu, cuda=None, float64_math=False, name=None):
        self.cpu = cpu
        self.cuda_factory = cuda
        self.float64_math = float64_math
        self.name = name or getattr(cpu, "__name__", repr(cpu))
        self._cuda_launch = None
        # small inputs run a serial twin of a parallel njit kernel (built on first use)
        self._parallel = getattr(cpu, "targetoptions", {}).get("parallel", False)
        self._serial = None

    def __call__(self, out, *args):
        if isinstance(out, np.ndarray):
            if recorded_calls is not None:
                recorded_calls.append((self, (out,) + args))
            if _largest_array(out, args) < PARALLEL_MIN_ELEMENTS:
                if not self._parallel:
                    return _run_single_threaded(self.cpu, out, args)
                if self._serial is None:
                    self._serial = serial_twin(self.cpu)
                return self._serial(out, *args)
            return self.cpu(out, *args)
        if self._cuda_launch is None:
            if self.cuda_factory is None:
                raise NotImplementedError(f"{self.name} has no CUDA kernel")
            self._cuda_launch = self.cuda_factory()
        return self._cuda_launch(out, *args)


def _fill_cpu(out, value):
    out.fill(value)


cuda = None  # numba.cuda, bound by the first CUDA call (see cuda_module)


@cuda_factory
def _fill_cuda():

    @cuda.jit
    def fill(out, value):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = value

    return grid_stride_launcher(fill)


fill_kernel = Kernel(cpu=_fill_cpu, cuda=_fill_cuda)
