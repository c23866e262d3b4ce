"""Files the command line writes for people to read (metrics, plots, DOT text): written to a
temporary name in the same folder and renamed, so a reader never sees half a file, with the
mode ``open()`` would have given (``mkstemp`` makes files 0600).

No matplotlib here: metrics.csv is written every epoch, and importing matplotlib costs ~0.5 s.
"""

import os
import tempfile


def public_mode():
    """0o666 minus the process umask: the mode ``open()`` would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path, write, binary=False):
    """``write(f)`` into a temporary file beside ``path``, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        os.chmod(tmp, public_mode())
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
