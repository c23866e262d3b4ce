"""Where numba caches minicbam's compiled kernels, in a folder named after the kernels' sources.

Kernels are compiled with ``cache=True``, so a second process loads them instead of
compiling again. numba keys a cache entry by the source file of the jitted function only:
a kernel that calls an ``@njit`` function defined in *another* file (the elementwise
launchers of minicbam/kernels/elementwise.py call the bodies in minicbam/ops/unary.py, the
ops call the index helpers of minicbam/kernels/, ...) is not recompiled when only that other
file changes, and silently keeps running the old code. Seen here: after an edit of relu's
body in ops/unary.py, relu went on dropping NaN until the cache was cleared by hand.

So minicbam puts its kernels in ``<root>/kernels-<stamp>``, where the stamp is a hash of
every file that defines kernels (device.py, kernels/, ops/): any change there (an upgrade,
an edit) starts a fresh folder, and a folder never mixes code of two versions. The root is
``$NUMBA_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/minicbam`` (``~/.cache/minicbam``).
Folders of older versions are left in place; delete the root to reclaim the space.
"""

import hashlib
import os

PACKAGE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = ("device.py", "kernels", "ops")  # everything that defines or calls kernels


def source_stamp(package=PACKAGE):
    """The first 16 hex digits of a SHA-256 over the kernel sources' paths and contents."""
    digest = hashlib.sha256()
    for path in _kernel_files(package):
        digest.update(os.path.relpath(path, package).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _kernel_files(package):
    for entry in KERNEL_SOURCES:
        top = os.path.join(package, entry)
        if os.path.isfile(top):
            yield top
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def cache_root():
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minicbam")


def configure():
    """Point numba's cache at this version's folder; before any kernel is decorated.

    Leaves numba's own default (``__pycache__`` beside the sources) when the folder cannot
    be created (no writable home)."""
    from numba.core import config

    folder = os.path.join(cache_root(), f"kernels-{source_stamp()}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    config.CACHE_DIR = folder
    return folder
