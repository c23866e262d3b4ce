"""Keep freed CPU memory for reuse instead of handing it back to the kernel at once.

Every op allocates its output with ``np.empty``, and a training step frees and allocates
the same sizes again and again. glibc's malloc serves blocks above its *mmap threshold*
with a fresh ``mmap`` and returns them with ``munmap`` on free; it also trims the top of
the heap back to the kernel once more than its *trim threshold* is free there. Either way
the next array of that size starts as untouched pages, and its first write costs a page
fault per 4 KiB page: zeroing a fresh 1 MiB array took ~186 us here, a warm one ~30 us.
The threshold glibc adjusts by itself (it rises to the largest block freed so far) did
not stop it: the digits CNN's train step made ~1,900 page faults per step, ~10 ms of
system CPU time (``benchmarks/run.py`` reports the faults per call of every workload).

``configure()`` fixes the mmap threshold at glibc's maximum (32 MiB) and the trim
threshold at 1 GiB, so freed blocks stay in the process and are reused, as PyTorch's
caching allocator does for GPU memory. Blocks above 32 MiB are still mapped and unmapped
each time. The cost: the process keeps up to the peak of its heap after a step instead
of shrinking between steps (the peak itself does not grow).

Only on glibc (Linux); elsewhere nothing changes. ``MINICBAM_CPU_MALLOC=system`` leaves
malloc as it was.
"""

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX / 2)
TRIM_THRESHOLD = 1 << 30

configured = False  # whether configure() changed malloc's settings in this process


def _glibc():
    """The process's C library when it is glibc (it alone exports gnu_get_libc_version),
    else None."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into the process
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def configure():
    """Set malloc's thresholds (see the module docstring); returns whether they were set."""
    global configured
    if os.environ.get("MINICBAM_CPU_MALLOC", "").lower() == "system":
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 when it refuses a value
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    configured = mmap_set and trim_set
    return configured
