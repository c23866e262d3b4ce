"""Counting what a computation asks of the CUDA device: a tool for making GPU code
measurable without a GPU.

    with count_device_events() as ev:
        train_step()
    ev.launches, ev.allocations, ev.host_to_device, ev.device_to_host, ev.host_arguments

* ``allocations`` / ``allocated_bytes``: device buffers minicbam asked for
  (``device.empty`` and everything built on it), each served by the caching allocator
  (minicbam/device_pool.py): ``pool_hits`` reused a cached block, ``driver_allocations``
  / ``driver_bytes`` took a new one from the driver (a pool miss);
* ``host_to_device`` / ``device_to_host``: explicit copies through ``device.to_device`` and
  ``device.to_host`` (``Tensor.numpy()``, ``.item()``, ``.to(...)``). A device-to-host copy
  waits for every queued kernel: it is also the implicit synchronisation of a step;
* ``launches``: CUDA kernel launches, per kernel name in ``per_kernel``;
* ``host_arguments``: NumPy arrays handed to a CUDA kernel. numba copies such an array to
  the device before the launch and back after it, so each is a hidden pair of copies and a
  synchronisation. With ``strict=True`` the first one raises ``HostArrayError``.

Each launch is also recorded with its shape (``launch_log``: kernel name, blocks, threads,
work items of its grid-stride loop, elements of its largest array), which is what
``launch_report`` summarises: how much of a GPU a kernel can keep busy.

Counting works the same on the simulator and on a real GPU, since it happens in minicbam's
own allocation, copy and launch functions (minicbam/device.py).
"""

import contextlib
from collections import Counter

import numpy as np

from minicbam import device


class HostArrayError(RuntimeError):
    """A NumPy array reached a CUDA kernel (a hidden host<->device copy)."""


class DeviceEvents:
    def __init__(self, strict=False):
        self.strict = strict
        self.allocations = 0
        self.allocated_bytes = 0
        self.driver_allocations = 0  # pool misses: memory taken from the driver
        self.driver_bytes = 0
        self.pool_hits = 0  # requests served by a cached block
        self.host_to_device = 0
        self.device_to_host = 0
        self.launches = 0
        self.host_arguments = 0
        self.error_reads = 0  # reads of the device error buffer, at a host read
        self.per_kernel = Counter()
        self.launch_log = []  # (name, blocks, threads, items or None, largest array size)

    @property
    def copies(self):
        return self.host_to_device + self.device_to_host + 2 * self.host_arguments

    def allocated(self, shape, dtype):
        self.allocations += 1
        self.allocated_bytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    def driver_allocated(self, nbytes):
        self.driver_allocations += 1
        self.driver_bytes += int(nbytes)

    def transferred(self, array, target):
        if target == device.CPU:
            self.device_to_host += 1
        else:
            self.host_to_device += 1

    def launched(self, kernel, out, args, blocks, threads, items):
        name = getattr(kernel, "__name__", None) or getattr(kernel, "py_func", kernel).__name__
        hosts = [a for a in (out,) + tuple(args) if isinstance(a, np.ndarray) and a.ndim > 0]
        if hosts:
            self.host_arguments += len(hosts)
            if self.strict:
                shapes = ", ".join(str(a.shape) for a in hosts)
                raise HostArrayError(
                    f"CUDA kernel {name!r} got NumPy array(s) of shape {shapes}: each is copied "
                    "to the device and back around the launch"
                )
        self.launches += 1
        self.per_kernel[name] += 1
        largest = max([getattr(a, "size", 0) for a in (out,) + tuple(args)] + [0])
        self.launch_log.append((name, blocks, threads, items, largest))

    def summary(self):
        return {
            "launches": self.launches,
            "allocations": self.allocations,
            "allocated_bytes": self.allocated_bytes,
            "driver_allocations": self.driver_allocations,
            "pool_hits": self.pool_hits,
            "host_to_device": self.host_to_device,
            "device_to_host": self.device_to_host,
            "host_arguments": self.host_arguments,
            "error_reads": self.error_reads,
        }


@contextlib.contextmanager
def count_device_events(strict=False):
    """Count CUDA allocations, copies and launches made inside the block (not nestable)."""
    if device.events is not None:
        raise RuntimeError("count_device_events: already counting (the counters do not nest)")
    events = DeviceEvents(strict)
    device.events = events
    try:
        yield events
    finally:
        device.events = None
