"""Devices: where arrays live, and the only module that allocates or moves them.

"cpu" arrays are C-contiguous NumPy arrays; "cuda" arrays are numba ``DeviceNDArray``s
(``FakeCUDAArray``s under the simulator, ``NUMBA_ENABLE_CUDASIM=1``).

A ``Kernel`` pairs a CPU implementation with a CUDA one and picks between them from where
its output buffer lives: ``k(out, *args)``. The CUDA side is a *factory* that builds and
returns a launcher on first use, so importing minicbam never imports ``numba.cuda`` (it
costs ~0.4 s) and no CUDA kernel compiles before it is needed.
"""

import contextlib
import functools
import math
import sys

import numpy as np

CPU = "cpu"
CUDA = "cuda"

# Launch shapes. Under the simulator every CUDA thread is a Python thread, so a grid-stride
# loop over a few threads is ~100x faster than one thread per element (docs/design.md,
# "Testing CUDA without a GPU").
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 4096
SIM_THREADS_PER_BLOCK = 32
SIM_MAX_BLOCKS = 1

cuda = None  # numba.cuda, bound by the first CUDA factory that runs (cuda_factory)

# When a DeviceEvents, CUDA allocations, host<->device copies and launches are counted into
# it (minicbam/device_events.py); None otherwise, at the cost of one test per call.
events = None

# When a function, some CUDA kernel checks (minicbam/device_errors.py) are pending: it is
# called before every read of device values, and raises the first error they recorded.
pending_errors = None

_backend = None
_backend_reason = None  # why CUDA is not usable, one line; None when it is


def cuda_backend():
    """'sim' (numba's CUDA simulator), 'gpu' (a device that ran a probe kernel) or 'none'."""
    global _backend, _backend_reason
    if _backend is None:
        _backend, _backend_reason = _detect_backend()
    return _backend


def cuda_unavailable_reason():
    """One line saying why CUDA cannot be used here, or None when it can."""
    cuda_backend()
    return _backend_reason


def _detect_backend():
    """(backend, reason). A driver and a device (``cuda.is_available()``) are not enough: the
    toolkit's compiler may emit PTX that the driver cannot load, which only shows when a
    kernel is compiled and launched. So a real GPU counts only after a probe kernel ran and
    gave the right answer."""
    from numba.core import config

    if config.ENABLE_CUDASIM:  # read once, when numba was imported
        return "sim", None
    try:
        from numba import cuda

        if not cuda.is_available():
            return "none", "numba.cuda finds no CUDA driver or no CUDA device"
    except Exception as error:  # a broken driver install counts as no GPU
        return "none", describe_cuda_failure(error)
    reason = probe_cuda()
    return ("gpu", None) if reason is None else ("none", reason)


def probe_cuda():
    """Compile, launch and read back a tiny kernel; None if it worked, else the reason."""
    try:
        out = cuda_module().device_array(64, dtype=np.int64)
        _probe_kernel()[1, 64](out)
        got = out.copy_to_host()
    except Exception as error:
        return describe_cuda_failure(error)
    if not np.array_equal(got, 2 * np.arange(64) + 1):
        return "a probe CUDA kernel ran but returned wrong values (driver or toolkit fault)"
    return None


# Substrings of driver/compiler errors and what they mean for the user.
_CUDA_FAILURES = (
    (
        ("UNSUPPORTED_PTX_VERSION", "PTX JIT", "ptx version", "NVVM_ERROR", "NvvmSupportError"),
        "the CUDA toolkit's compiler is newer than the driver can load (driver/toolkit "
        "mismatch): install minicbam[cuda12] for drivers older than R580, or update the driver",
    ),
    (
        ("libnvrtc", "libnvvm", "DynamicLibNotFound", "NVRTC", "nvvm"),
        "numba.cuda finds no NVVM/NVRTC compiler libraries: install minicbam[cuda]",
    ),
    (
        ("driver library cannot be found", "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device"),
        "numba.cuda finds no CUDA driver or no CUDA device",
    ),
    (
        ("CUDA_ERROR_INSUFFICIENT_DRIVER", "driver version is insufficient"),
        "the CUDA driver is older than the CUDA runtime needs: update the driver or install "
        "minicbam[cuda12]",
    ),
)


def describe_cuda_failure(error):
    """A one-line reason for an exception raised while setting up or probing CUDA."""
    text = f"{type(error).__name__}: {error}"
    for needles, reason in _CUDA_FAILURES:
        if any(needle.lower() in text.lower() for needle in needles):
            return f"{reason} ({_first_line(text)})"
    return f"a probe CUDA kernel failed: {_first_line(text)}"


def _first_line(text, limit=160):
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


def cuda_is_available():
    return cuda_backend() != "none"


_cuda_index = None  # the CUDA device this process uses, chosen by the first "cuda[:N]"


def normalize_device(device):
    """'cpu' or 'cuda' from 'cpu', 'cuda' or 'cuda:N'.

    One process uses one CUDA device: 'cuda:N' selects device N on first use (numba binds
    a context per thread); asking later for another index is an error."""
    name = str(device)
    if name == CPU:
        return CPU
    index = _cuda_index_of(name)
    if index is None:
        raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if not cuda_is_available():
        hint = " (NUMBA_ENABLE_CUDASIM=1 before importing numba runs the simulator)"
        raise RuntimeError(
            f"device {name!r} requested but CUDA is unusable: {_backend_reason}{hint}"
        )
    _select_cuda(index, name)
    return CUDA


def _cuda_index_of(name):
    if name == CUDA:
        return 0 if _cuda_index is None else _cuda_index
    prefix, _, number = name.partition(":")
    if prefix != CUDA or not number.isdigit():
        return None
    return int(number)


def _select_cuda(index, name):
    global _cuda_index
    if _cuda_index == index:
        return
    if _cuda_index is not None:
        raise ValueError(
            f"device {name!r}: this process already uses cuda:{_cuda_index} "
            "(minicbam runs one CUDA device per process)"
        )
    cuda = cuda_module()
    count = len(cuda.gpus)
    if index >= count:
        raise ValueError(
            f"device {name!r}: only {count} CUDA device(s) found (cuda:0..{count - 1})"
        )
    if index != 0 or cuda_backend() == "gpu":
        cuda.select_device(index)
    _cuda_index = index


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


@cuda_factory
def _probe_kernel():
    @cuda.jit
    def probe(out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = 2 * i + 1

    return probe


# ----------------------------------------------------------------------------- allocation
def empty(shape, dtype, device):
    shape = tuple(int(s) for s in shape)
    if device == CPU:
        return np.empty(shape, dtype=dtype)
    if events is not None:
        events.allocated(shape, dtype)
    return device_pool.empty(shape, dtype)


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
    if events is not None:
        events.transferred(array, device)
    if device == CPU:
        _raise_pending_errors()
        return array.copy_to_host()
    # ascontiguousarray makes 0-d arrays 1-d; reshape keeps the shape
    host = np.ascontiguousarray(array).reshape(array.shape)
    out = empty(host.shape, host.dtype, CUDA)  # from the pool, as every CUDA array
    if host.size:
        out.copy_to_device(host)
    return out


def copy(array):
    """A new array with the same contents, on the same device."""
    if isinstance(array, np.ndarray):
        return array.copy()
    out = empty(array.shape, array.dtype, CUDA)
    out.copy_to_device(array)
    return out


def to_host(array):
    """A NumPy copy of any array."""
    if isinstance(array, np.ndarray):
        return array.copy()
    if events is not None:
        events.transferred(array, CPU)
    _raise_pending_errors()
    return array.copy_to_host()


def _raise_pending_errors():
    if pending_errors is not None:
        if events is not None:
            events.error_reads += 1
        pending_errors()


def synchronize():
    """Wait for every queued CUDA kernel, then raise any error a checking kernel recorded
    (``torch.cuda.synchronize``; a no-op without CUDA use)."""
    if "numba.cuda" in sys.modules and cuda_backend() != "none":
        cuda_module().synchronize()
    _raise_pending_errors()


def flat(array):
    """A 1-D view of a C-contiguous array (NumPy or CUDA). Of a non-contiguous NumPy array it
    is a copy: fine for a kernel's input, never for an array the kernel updates (see
    ``updated_in_place``)."""
    return array.reshape(array.size)


@contextlib.contextmanager
def updated_in_place(array):
    """``with updated_in_place(a) as a1:`` a 1-D array for a kernel that updates ``a`` in place
    (an optimizer's parameter). A non-contiguous NumPy array of 2 or more dimensions
    (``p.data = w.T``) has no 1-D view, and ``flat`` would hand the kernel a copy whose update
    is then lost: the kernel updates a contiguous copy instead, copied back into ``a`` on exit.
    (A strided 1-D array, e.g. batch norm's running statistics as ``buf[::2]``, is its own
    1-D view; it is copied too, so that kernels see one memory layout.)"""
    if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
        work = np.ascontiguousarray(array)
        yield work.reshape(work.size)
        np.copyto(array, work)
    else:
        yield flat(array)


# ----------------------------------------------------------------------------- launching
def launch_config(n):
    """(blocks, threads) for a grid-stride loop over ``n`` items."""
    if cuda_backend() == "sim":
        return SIM_MAX_BLOCKS, SIM_THREADS_PER_BLOCK
    return gpu_launch_config(n)


def gpu_launch_config(n):
    """(blocks, threads) a real GPU gets for a grid-stride loop over ``n`` items."""
    blocks = min(MAX_BLOCKS, max(1, math.ceil(n / THREADS_PER_BLOCK)))
    return blocks, THREADS_PER_BLOCK


def launcher(kernel, items=None, config=None, stages=None):
    """``launch(out, *args)`` running ``kernel[blocks, threads](out, *args)``.

    The kernel receives exactly the Kernel's arguments (the PTX compile check in
    tests/cuda_compile relies on it). ``items(out, *args)`` gives the number of work items
    of a grid-stride loop (default ``out.size``); ``config(out, *args)`` instead returns
    ``(blocks, threads)`` directly, for kernels with 2-D blocks or shared-memory tiles.
    ``launch.gpu_shape(out, *args)`` gives the ``(blocks, threads, items)`` a real GPU would
    launch, without launching (for reports made on the simulator; ``config`` kernels report
    their current configuration and items None).

    ``stages(gpu, out, *args)`` instead plans a call made of several launches (a two-stage
    reduction: per-block partials into a scratch buffer, then one block per output). It
    returns ``[(kernel, blocks, threads, items, kernel_args), ...]``, launched in order, with
    any scratch buffer made by ``empty`` on ``out``'s device; ``gpu`` asks for a real GPU's
    plan rather than the current backend's. ``launch.stages(out, *args)`` is the GPU plan,
    which the PTX check compiles stage by stage, and ``gpu_shape`` is its first stage (the
    one that reads the input).
    """

    def shape(args, grid_config):
        if config is not None:
            return (*config(*args), None)
        n = args[0].size if items is None else items(*args)
        return (*grid_config(n), n)

    def launch(out, *args):
        if stages is not None:
            for k, blocks, threads, n, kernel_args in stages(cuda_backend() != "sim", out, *args):
                if events is not None:
                    events.launched(k, kernel_args[0], kernel_args[1:], blocks, threads, n)
                k[blocks, threads](*kernel_args)
            return
        blocks, threads, n = shape((out,) + args, launch_config)
        if events is not None:
            events.launched(kernel, out, args, blocks, threads, n)
        kernel[blocks, threads](out, *args)

    launch.kernel = kernel
    if stages is None:
        launch.gpu_shape = lambda *args: shape(args, gpu_launch_config)
    else:
        launch.stages = lambda *args: stages(True, *args)
        launch.gpu_shape = lambda *args: stages(True, *args)[0][1:4]
    return launch


# Below this many elements a CPU kernel runs its parallel loop on one thread: waking the
# other thread costs ~10 us on an idle machine and ~150 us on a loaded one, more than the
# work itself (measured on the 2-core machine).
PARALLEL_MIN_ELEMENTS = 1 << 15

# A kernel whose parallel version pays only on large inputs declares
# ``Kernel(..., parallel_from=LARGE_INPUT_ELEMENTS)``: smaller inputs run (and compile) only
# its serial twin, and the parallel version compiles when the first large input arrives. A
# parallel compile costs ~3x a serial one (1-8 s per kernel), while splitting the ~0.1-1 M
# element calls of a small model over 2 cores saved at most a few tens of us per call
# (benchmarks/README.md, "First run: compile time").
LARGE_INPUT_ELEMENTS = 1 << 20


def _largest_array(out, args):
    largest = out.size
    for a in args:
        if isinstance(a, np.ndarray) and a.size > largest:
            largest = a.size
    return largest


def serial_twin(dispatcher):
    """``dispatcher``'s function compiled without ``parallel=True`` (other options kept).

    A small input then skips numba's parallel launch (~10-40 us per call, more than the
    work), and a kernel that only ever sees small inputs never compiles its parallel version
    (~3x slower to compile). The twin is a copy of the function under its own name: numba's
    cache keys entries by qualified name and signature, not by options, so the two versions
    need distinct names."""
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
    ``serial_small=True`` runs inputs smaller than ``parallel_from`` elements (largest array
    argument; default ``PARALLEL_MIN_ELEMENTS``) through ``serial_twin(cpu)``; giving
    ``parallel_from`` implies ``serial_small``. ``serial_cpu`` is that twin once built (None
    before).
    """

    def __init__(
        self, cpu, cuda=None, float64_math=False, name=None, serial_small=False, parallel_from=None
    ):
        self.cpu = cpu
        self.cuda_factory = cuda
        self.float64_math = float64_math
        self.name = name or getattr(cpu, "__name__", repr(cpu))
        self._cuda_launch = None
        # serial_small: small inputs run a serial twin of the parallel njit kernel (built on
        # first use, then compiled per signature like any njit function), large ones the
        # parallel kernel. A kernel that sees both sizes compiles both versions (the serial
        # one ~3x cheaper), so each kernel says from which size its parallel version pays.
        parallel = getattr(cpu, "targetoptions", {}).get("parallel", False)
        serial_small = serial_small or parallel_from is not None
        self._parallel = bool(serial_small and parallel)
        self.parallel_from = PARALLEL_MIN_ELEMENTS if parallel_from is None else parallel_from
        self.serial_cpu = None

    def __call__(self, out, *args):
        if not isinstance(out, np.ndarray):
            return self._call_cuda(out, args)
        return self.call_cpu(_largest_array(out, args), out, *args)

    def call_cpu(self, size, out, *args):
        """The CPU call, for a caller that knows ``size``, the number of elements of the
        largest array argument (an elementwise map: ``out.size``)."""
        if recorded_calls is not None:
            recorded_calls.append((self, (out,) + args))
        if size < self.parallel_from:
            if self.serial_cpu is not None:  # the common small call: one attribute test
                return self.serial_cpu(out, *args)
            if not self._parallel:
                return _run_single_threaded(self.cpu, out, args)
            self.serial_cpu = serial_twin(self.cpu)
            return self.serial_cpu(out, *args)
        return self.cpu(out, *args)

    def cpu_for(self, size):
        """What runs ``out, *args`` on the CPU for a largest argument of ``size`` elements:
        the serial twin itself when ``call_cpu`` would pick it and it is built (a small call
        then skips call_cpu's frame and argument repacking, ~0.5 us of a (4, 4) op), else
        ``call_cpu`` for that size."""
        serial = self.serial_cpu
        if serial is not None and size < self.parallel_from and recorded_calls is None:
            return serial
        return functools.partial(self.call_cpu, size)

    def _call_cuda(self, out, args):
        if self._cuda_launch is None:
            if self.cuda_factory is None:
                raise NotImplementedError(f"{self.name} has no CUDA kernel")
            self._cuda_launch = self.cuda_factory()
        return self._cuda_launch(out, *args)


def _fill_cpu(out, value):
    out.fill(value)


@cuda_factory
def _fill_cuda():

    @cuda.jit
    def fill(out, value):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = value

    return launcher(fill)


fill_kernel = Kernel(cpu=_fill_cpu, cuda=_fill_cuda)


# Every CUDA array comes from the caching allocator; its counters and cache, as torch.cuda's.
from minicbam import device_pool  # imported last: it uses this module's names at call time
from minicbam.device_pool import (  # noqa: F401  (re-exported)
    empty_cache,
    max_memory_allocated,
    memory_allocated,
    memory_reserved,
    memory_stats,
    reset_peak_memory_stats,
)
