"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10
binary version. Both validate the whole file and raise ``ValueError`` naming the file and
what was expected, rather than returning a mis-shaped array. Reads are bounded: only regular
files are opened (a directory, FIFO or device raises ``ValueError``), an IDX file is read
only as far as its header's shape says, and a CIFAR batch (even gzipped) at most as far as
60,000 records.

IDX: 2 zero bytes, a type byte (0x08 = uint8, ...), a byte giving the number of dimensions,
one big-endian uint32 per dimension, then the values in C order, big-endian.
CIFAR-10 binary: records of 1 label byte followed by 3072 pixel bytes (the 1024 red, then
green, then blue values of a 32x32 image, rows top to bottom).
"""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from minicbam.io.serialization import check_regular

__all__ = ["find_files", "read_bytes", "read_cifar_batch", "read_idx"]

# IDX type byte -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_MAX_RECORDS = 60000  # all of CIFAR-10 in one file: anything larger is not a batch


def _open(path):
    """A binary stream of ``path`` (gunzipped if its name ends in ``.gz``); a directory,
    FIFO or device raises ValueError before anything is read."""
    path = Path(path)
    check_regular(str(path), os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    f = os.fdopen(fd, "rb")
    try:
        check_regular(str(path), os.fstat(f.fileno()).st_mode)
    except BaseException:
        f.close()
        raise
    return gzip.GzipFile(fileobj=f, mode="rb") if path.suffix == ".gz" else f


def _read(path, f, n):
    """At most ``n`` bytes of ``f``; gzip damage becomes a ValueError naming ``path``."""
    try:
        return f.read(n)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def read_bytes(path, limit=None):
    """The bytes of ``path``, gunzipped if its name ends in ``.gz``; more than ``limit``
    bytes (a gzip bomb, a runaway file) raise ValueError."""
    with _open(path) as f:
        stream = getattr(f, "fileobj", f)  # the file under a GzipFile
        size = os.fstat(stream.fileno()).st_size
        data = _read(path, f, (size if limit is None else limit) + 1)
        if limit is not None and len(data) > limit:
            raise ValueError(f"{path}: more than {limit} bytes; not a dataset file")
        if f is stream and len(data) != size:
            raise ValueError(f"{path}: the file changed size while it was read")
    return data


def read_idx(path, ndim=None):
    """Parse an IDX file (optionally gzipped) into an array of its native shape and type.

    Only the bytes the header's shape accounts for are read (plus one, to detect trailing
    bytes), so a header that claims more items than the file holds is reported as
    truncated and a gzip bomb never inflates past it."""
    with _open(path) as f:
        head = _read(path, f, 4)
        if len(head) < 4:
            raise ValueError(f"{path}: {len(head)} bytes is too short for an IDX header (4 bytes)")
        if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
            raise ValueError(f"{path}: bad IDX magic number 0x{head.hex()}; expected 0x0000TTDD")
        dtype, got_ndim = _IDX_DTYPES[head[2]], head[3]
        if ndim is not None and got_ndim != ndim:
            raise ValueError(f"{path}: expected an IDX file with {ndim} dimensions, got {got_ndim}")
        dims = _read(path, f, 4 * got_ndim)
        if len(dims) < 4 * got_ndim:
            raise ValueError(
                f"{path}: truncated IDX header ({4 + len(dims)} of {4 + 4 * got_ndim} bytes)"
            )
        shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
        expected = math.prod(shape) * dtype.itemsize
        data = _read(path, f, expected + 1)
    got = len(data)
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        extra = "" if got < expected else " or more"
        raise ValueError(
            f"{path}: {what}: shape {shape} needs {expected} data bytes, got {got}{extra}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar_batch(path):
    """One CIFAR-10 binary batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    data = read_bytes(path, limit=_CIFAR_MAX_RECORDS * CIFAR_RECORD)
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise ValueError(
            f"{path}: size {len(data)} bytes is not a positive multiple of the "
            f"CIFAR-10 record size {CIFAR_RECORD} (1 label byte + 3072 pixel bytes)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape((-1,) + CIFAR_IMAGE_SHAPE)
    return images, labels


def _find(name, dirs):
    for folder in dirs:
        for candidate in (Path(folder) / name, Path(folder) / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def find_files(owner, names, dirs):
    """For each name, the first ``dir/name`` or ``dir/name.gz`` that exists.

    Raises FileNotFoundError listing the missing names, the expected ones and where it looked.
    """
    found = [_find(name, dirs) for name in names]
    missing = [name for name, path in zip(names, found, strict=True) if path is None]
    if missing:
        raise FileNotFoundError(
            f"{owner}: missing {', '.join(missing)} (each may also end in .gz); "
            f"expected files: {', '.join(names)}; searched: {', '.join(str(d) for d in dirs)}"
        )
    return found
