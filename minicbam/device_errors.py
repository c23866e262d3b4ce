"""Errors found by CUDA kernels, raised at the next host read (as CUDA's device-side asserts).

A check on the host (is every label in range?) would copy the values back and wait for
the device, once per step. A checking kernel instead records the first failure in a small
device buffer, and the error is raised on the host at the next explicit read of any device
value (``device.to_host``: ``Tensor.numpy()``, ``.item()``, printing a tensor,
``device.synchronize()``), when the host waits for the device anyway.

The buffer ``err`` (int64, on the device) holds ``[check, index, value]``:

    err[0] = NONE (-1) while no check failed, else the number of the first failed check
    err[1] = the flat index of its first bad element, err[2] = that element's value

Checks are numbered on the host in launch order (``register(make_error)`` returns the
number a kernel writes); kernels run in that order on the one stream, and a kernel writes
only while ``err[0] == NONE``, so the error raised is the first failure in program order.
``make_error(index, value)`` builds the exception (naming the op and the bad value). After
a read the numbering restarts and the buffer is cleared (only when it holds an error).
A loop that never reads is synchronised every ``MAX_PENDING`` checks.
"""

import numpy as np

from minicbam import device

NONE = -1
# Pending checks are read (a synchronisation) once this many accumulate without a host
# read, so a loop that never reads keeps a bounded list.
MAX_PENDING = 4096

_buffer = None  # the device error buffer, made on first use
_pending = []  # make_error of check k at index k, since the last read


def error_buffer():
    """The device buffer checking kernels write their first failure into."""
    global _buffer
    if _buffer is None:
        _buffer = device.full((3,), NONE, np.int64, device.CUDA)
    return _buffer


def register(make_error):
    """Number a check about to be launched; ``make_error(index, value)`` is its exception."""
    if len(_pending) >= MAX_PENDING:
        device.synchronize()
    _pending.append(make_error)
    device.pending_errors = check
    return len(_pending) - 1


def check():
    """Raise the first failure the pending checks recorded, if any (reads the buffer: the
    caller is about to wait for the device anyway)."""
    if not _pending:
        return
    pending = list(_pending)
    _pending.clear()
    device.pending_errors = None
    err = _buffer.copy_to_host()
    if err[0] == NONE:
        return
    _buffer.copy_to_device(np.full(3, NONE, dtype=np.int64))
    raise pending[int(err[0])](int(err[1]), int(err[2]))


def discard():
    """Forget pending checks and clear the buffer (tests; a fresh start after an error)."""
    _pending.clear()
    device.pending_errors = None
    if _buffer is not None:
        _buffer.copy_to_device(np.full(3, NONE, dtype=np.int64))
