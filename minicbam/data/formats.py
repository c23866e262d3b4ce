"""Readers for the on-disk dataset formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10
binary version. Both validate the whole file and raise ``ValueError`` naming the file and
what was expected, rather than returning a mis-shaped array.

IDX: 2 zero bytes, a type byte (0x08 = uint8, ...), a byte giving the number of dimensions,
one big-endian uint32 per dimension, then the values in C order, big-endian.
CIFAR-10 binary: records of 1 label byte followed by 3072 pixel bytes (the 1024 red, then
green, then blue values of a 32x32 image, rows top to bottom).
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_bytes", "read_idx", "read_cifar_batch", "find_files"]

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


def read_bytes(path):
    """The bytes of ``path``, gunzipped if its name ends in ``.gz``."""
    path = Path(path)
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def read_idx(path, ndim=None):
    """Parse an IDX file (optionally gzipped) into an array of its native shape and type."""
    data = read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000TTDD")
    dtype, got_ndim = _IDX_DTYPES[data[2]], data[3]
    if ndim is not None and got_ndim != ndim:
        raise ValueError(f"{path}: expected an IDX file with {ndim} dimensions, got {got_ndim}")
    header = 4 + 4 * got_ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", got_ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: shape {shape} needs {expected} data bytes, got {got}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar_batch(path):
    """One CIFAR-10 binary batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    data = read_bytes(path)
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
