"""A caching allocator for CUDA buffers: steady-state training steps take nothing new from
the driver.

Every CUDA array minicbam makes comes from ``device.empty``, which asks this pool. A request
of ``n`` bytes is served by a *block* of ``bucket(n)`` bytes, a size class with at most 25 %
slack:

    bucket(n) = 512                                  n <= 512
              = ceil(n / 2^(k-2)) * 2^(k-2)          2^k <= n < 2^(k+1)   (4 classes per octave)

A free block of that size is reused (a *hit*); only when none is cached does the pool call
the driver (a *miss*, a driver allocation). A block goes back to the pool when the last
array using it dies, never earlier:

* on a GPU, the array's ``gpu_data`` is an ``OwnedPointer`` of a per-request
  ``AutoFreePointer`` (numba's own reference-counting scheme: every view, reshape or slice
  takes a reference; the finaliser runs when the count drops to zero);
* on the simulator, the array wraps a NumPy array made from a per-request owner object
  (``__array_interface__`` into the block); NumPy views keep their base chain alive, so
  the owner's finaliser runs once no view is left.

A reused block may still be read by kernels queued before the release; minicbam launches
everything on one stream, so those run before any kernel that writes the new array
(the same argument as PyTorch's caching allocator on one stream).

``stats()`` gives PyTorch-like counters (``memory_allocated``: bytes of blocks in use;
``max_memory_allocated``: its peak; ``memory_reserved``: in use plus cached), and
``empty_cache()`` hands the cached blocks back to the driver. A failed driver allocation
empties the cache and retries once. ``MINICBAM_CUDA_POOL=0`` turns the pool off (every
request then goes to numba, as before).
"""

import functools
import gc
import os
import weakref

import numpy as np

from minicbam import device

MIN_BLOCK = 512

_free = {}  # bucket bytes -> [block, ...] cached, unused
_leases = {}  # lease id -> AutoFreePointer of a block in use (GPU: numba needs a strong ref)
_next_lease = 0
_stats = {
    "allocated": 0,  # bytes of blocks in use
    "peak": 0,
    "reserved": 0,  # bytes of every block the pool holds (in use + cached)
    "driver_allocations": 0,  # misses
    "hits": 0,
    "releases": 0,
}


def enabled():
    return os.environ.get("MINICBAM_CUDA_POOL", "1") != "0"


def bucket(nbytes):
    """The block size serving a request of ``nbytes`` (see the module docstring)."""
    if nbytes <= MIN_BLOCK:
        return MIN_BLOCK
    step = 1 << (nbytes.bit_length() - 3)
    return -(-nbytes // step) * step


def empty(shape, dtype):
    """An uninitialised CUDA array of ``shape`` and ``dtype`` from the pool."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    cuda = device.cuda_module()
    if nbytes == 0 or not enabled():
        if nbytes and device.events is not None:
            device.events.driver_allocated(nbytes)
        return cuda.device_array(shape, dtype=dtype)
    size = bucket(nbytes)
    cached = _free.get(size)
    if cached:
        block = cached.pop()
        _stats["hits"] += 1
        if device.events is not None:
            device.events.pool_hits += 1
    else:
        block = _driver_block(size)
    _stats["allocated"] += size
    _stats["peak"] = max(_stats["peak"], _stats["allocated"])
    if device.cuda_backend() == "sim":
        return _simulated_array(block, size, shape, dtype)
    return _device_array(block, size, shape, dtype)


def _driver_block(size):
    try:
        block = _allocate(size)
    except Exception:  # out of memory, most likely: give the cache back and retry once
        if not any(_free.values()):
            raise
        empty_cache()
        block = _allocate(size)
    _stats["driver_allocations"] += 1
    _stats["reserved"] += size
    if device.events is not None:
        device.events.driver_allocated(size)
    return block


def _allocate(size):
    cuda = device.cuda_module()
    if device.cuda_backend() == "sim":
        return cuda.device_array(size, dtype=np.uint8)
    return cuda.current_context().memalloc(size)


def _release(size, block, lease=None):
    """The last array using ``block`` died: cache it for the next request of its size."""
    if lease is not None:
        _leases.pop(lease, None)
    _stats["allocated"] -= size
    _stats["releases"] += 1
    _free.setdefault(size, []).append(block)


class _BlockView:
    """Owns one request's view of a simulated block; NumPy arrays made from it (and all
    their views) keep it alive through their ``base``."""

    __slots__ = ("__array_interface__", "__weakref__", "block")

    def __init__(self, block, shape, dtype):
        self.block = block
        host = block._ary  # the simulator's device memory is a NumPy array
        self.__array_interface__ = {
            "shape": tuple(shape),
            "typestr": dtype.str,
            "descr": dtype.descr,
            "data": (host.ctypes.data, False),
            "version": 3,
        }


def _simulated_array(block, size, shape, dtype):
    owner = _BlockView(block, shape, dtype)
    weakref.finalize(owner, _release, size, block)
    return type(block)(np.asarray(owner))


def _device_array(block, size, shape, dtype):
    """A DeviceNDArray on ``block`` whose memory returns to the pool with its last view."""
    global _next_lease
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import AutoFreePointer

    _next_lease += 1
    lease = _next_lease
    release = functools.partial(_release, size, block, lease)
    pointer = AutoFreePointer(block.context, block.device_pointer, size, finalizer=release)
    _leases[lease] = pointer  # as numba's allocations table: views hold weak proxies
    strides = _c_strides(shape, dtype.itemsize)
    return DeviceNDArray(shape, strides, dtype, gpu_data=pointer.own())


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def empty_cache():
    """Give every cached (unused) block back to the driver (``torch.cuda.empty_cache``)."""
    for size, blocks in _free.items():
        _stats["reserved"] -= size * len(blocks)
    _free.clear()
    gc.collect()


def stats():
    """The pool's counters: bytes ``allocated`` (blocks in use), its ``peak``, ``reserved``
    (in use + cached), ``cached``, ``driver_allocations`` (misses), ``hits``, ``releases``."""
    out = dict(_stats)
    out["cached"] = sum(size * len(blocks) for size, blocks in _free.items())
    return out


def reset_peak_stats():
    """Restart ``peak`` (``max_memory_allocated``) from the bytes in use now."""
    _stats["peak"] = _stats["allocated"]


# The names torch.cuda uses (re-exported by minicbam.device).
memory_stats = stats
reset_peak_memory_stats = reset_peak_stats


def memory_allocated():
    """Bytes of pool blocks held by live CUDA arrays."""
    return _stats["allocated"]


def max_memory_allocated():
    """The peak of ``memory_allocated()`` since the start or ``reset_peak_memory_stats()``."""
    return _stats["peak"]


def memory_reserved():
    """Bytes the pool holds from the driver: blocks in use and cached ones."""
    return _stats["reserved"]
