"""Saving and loading nested dicts of arrays: safetensors, npz, and PyTorch files without torch.

``save(obj, path)`` writes a (possibly nested) dict whose leaves are arrays (NumPy arrays or
anything with a ``.numpy()`` method, e.g. minicbam Tensors), Python scalars (int, float, bool,
str, None) or lists/tuples of those. The format follows the suffix:

* ``.safetensors``: every array is one tensor named by the '.'-joined path of its keys
  (``{"model": {"fc.weight": w}}`` -> ``"model.fc.weight"``), so other tools read the file as
  a flat dict. The tree itself (nesting, key types, scalar leaves, where each array goes) is
  JSON in the header's ``__metadata__`` under the single key ``"__minicbam__"``.
* ``.npz``: the same flat names as ``.npy`` members of a zip archive; the JSON tree is a uint8
  array under the reserved name ``"__minicbam__"``. Nothing is pickled (``allow_pickle=False``).

The JSON tree is tagged so that loading is exact: ``{"d": [[key, node], ...]}`` is a dict
(keys str or int, order kept), ``{"a": "flat.name"}`` an array, ``{"v": scalar}`` a scalar,
``{"l": [...]}`` / ``{"t": [...]}`` a list / tuple. NumPy scalars are stored as 0-d arrays.

Writes are atomic: the bytes go to a temporary file in the target's directory, which is
flushed, fsync'ed and then ``os.replace``'d over the target, so a crash leaves either the old
file or the new one, never a torn one.

``load(path)`` inverts ``save``; flat safetensors/npz files written by other tools load as a
flat dict. PyTorch files (``.pth``, ``.pt``, ``.pth.tar``, ``.bin``) load WITHOUT torch, in
both the zip and the legacy format, through the restricted unpickler in
``minicbam.io.torch_pickle``: a pickle that asks for anything but torch's tensor-rebuild functions,
``collections.OrderedDict`` and the storage type names raises ``UnsafeFileError`` before any
code runs. Tensors come back as NumPy arrays (bfloat16 widened to float32), containers as
dicts, lists and tuples.

Every malformed file raises ``CorruptFileError`` (a ``ValueError``) naming the path and the
problem; a missing file raises ``FileNotFoundError``. Reading is bounded by the file: only
regular files are read (a directory, FIFO or device such as ``/dev/zero``, also behind a
symlink, raises ``CorruptFileError`` before any read), never more than their size, and
every size a format declares (zip members, ``.npy`` headers, torch storages) is checked
against the bytes present before memory is allocated for it.

``save`` refuses, before writing anything, what it could not load back exactly: keys other
than str and int, the flat names ``"__minicbam__"`` and ``"__metadata__"`` (reserved by
minicbam's tree and by safetensors), keys that are not valid UTF-8, object, string,
structured and datetime arrays, and dtypes the format lacks (complex and extended
precision in safetensors). Arrays come back C-contiguous and native-endian.
"""

import contextlib
import io
import json
import os
import reprlib
import stat
import tempfile
import zipfile

import numpy as np
import safetensors
import safetensors.numpy

__all__ = ["CorruptFileError", "UnsafeFileError", "load", "save"]

_TREE_KEY = "__minicbam__"
_SAVE_SUFFIXES = (".safetensors", ".npz")
_TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin")
# safetensors dtype names <-> NumPy; BF16 (no NumPy dtype) is widened to float32 on load.
_ST_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64,
}  # fmt: skip
# What each format can store and give back exactly: safetensors has no complex and no
# extended-precision type; npz takes any NumPy number (nothing is pickled).
_ST_SAVE_DTYPES = frozenset(np.dtype(d).newbyteorder("=") for d in _ST_DTYPES.values())
_NPZ_SAVE_KINDS = "biufc"
_RESERVED_NAMES = (_TREE_KEY, "__metadata__")
# A zip member may decompress to at most this many times its stored size: deflate's own limit
# (1032:1), so a genuine member always passes and a zip bomb is refused before it is read.
_MAX_ZIP_RATIO = 1032


class CorruptFileError(ValueError):
    """A file is truncated, garbled or not in the format its name says."""


class UnsafeFileError(ValueError):
    """A pickle asks for a global outside the allow-list; nothing from it was executed."""


# ----------------------------------------------------------------------------------- save


def save(obj, path):
    """Write the nested dict ``obj`` to ``path`` (``.safetensors`` or ``.npz``) atomically."""
    path = os.fspath(path)
    suffix = _save_suffix(path)
    if not isinstance(obj, dict):
        raise TypeError(f"save() expects a dict, got {type(obj).__name__}")
    arrays = {}
    tree = _encode(obj, (), arrays, "st" if suffix == ".safetensors" else _NPZ_SAVE_KINDS)
    try:
        header = json.dumps({"format": "minicbam", "version": 1, "tree": tree})
        header.encode("utf-8")
        for name in arrays:
            name.encode("utf-8")
    except (UnicodeEncodeError, ValueError) as e:
        raise ValueError(
            f"cannot save to {path!r}: a key cannot be written as UTF-8 ({e})"
        ) from None
    if suffix == ".safetensors":
        _atomic_write(path, lambda f: f.write(_safetensors_bytes(arrays, header)))
    else:
        _atomic_write(path, lambda f: _write_npz(f, arrays, header))


def _save_suffix(path):
    for suffix in _SAVE_SUFFIXES:
        if path.lower().endswith(suffix):
            return suffix
    raise ValueError(f"cannot save {path!r}: supported suffixes are {', '.join(_SAVE_SUFFIXES)}")


def _encode(node, keys, arrays, kinds):
    """Return the JSON tag of ``node``; arrays are moved to ``arrays`` under their flat name."""
    where = ".".join(map(str, keys)) or "<root>"
    if isinstance(node, dict):
        items = []
        for k, v in node.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"key {k!r} at {where!r}: only str and int keys can be saved")
            items.append([k, _encode(v, keys + (k,), arrays, kinds)])
        return {"d": items}
    if isinstance(node, (list, tuple)):
        tag = "t" if isinstance(node, tuple) else "l"
        return {tag: [_encode(v, keys + (i,), arrays, kinds) for i, v in enumerate(node)]}
    # NumPy scalars (np.float64 subclasses float) keep their dtype as 0-d arrays.
    if node is None or (
        isinstance(node, (bool, int, float, str)) and not isinstance(node, np.generic)
    ):
        return {"v": node}
    return {"a": _add_array(node, where, arrays, kinds)}


def _add_array(node, where, arrays, kinds):
    if isinstance(node, (np.ndarray, np.generic)):
        array = np.asarray(node)
    elif callable(getattr(node, "numpy", None)):
        array = np.asarray(node.numpy())
    else:
        raise TypeError(f"value at {where!r}: cannot save a {type(node).__name__}")
    if not _savable(array.dtype, kinds):
        raise TypeError(f"array at {where!r}: dtype {array.dtype} cannot be saved in this format")
    if where in _RESERVED_NAMES:
        raise ValueError(
            f"the flat name {where!r} is reserved (minicbam's tree, safetensors' "
            "metadata); rename the key"
        )
    if where in arrays:
        raise ValueError(f"two arrays would be stored under the flat name {where!r}")
    arrays[where] = array
    return where


def _savable(dtype, kinds):
    if kinds == "st":
        return dtype.newbyteorder("=") in _ST_SAVE_DTYPES
    return dtype.kind in kinds and not dtype.hasobject and dtype.fields is None


def _safetensors_bytes(arrays, header):
    # safetensors stores little-endian C-contiguous data.
    tensors = {k: np.asarray(a, a.dtype.newbyteorder("<"), order="C") for k, a in arrays.items()}
    return safetensors.numpy.save(tensors, metadata={_TREE_KEY: header})


def _write_npz(f, arrays, header):
    # What np.savez does, without its keyword-argument names clashing with ours ("file").
    members = dict(arrays)
    members[_TREE_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in members.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _atomic_write(path, write):
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; keep an existing file's mode, else the usual 0644.
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # Makes the rename itself durable; directories cannot be opened on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------- load


def load(path):
    """Read a file written by ``save``, a flat safetensors/npz file, or a PyTorch file."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(".safetensors"):
        reader = _load_safetensors
    elif lower.endswith(".npz"):
        reader = _load_npz
    elif lower.endswith(_TORCH_SUFFIXES):
        # Imported here: minicbam.io.torch_pickle imports the error classes from this module.
        from minicbam.io.torch_pickle import load_torch as reader
    else:
        supported = ", ".join(_SAVE_SUFFIXES + _TORCH_SUFFIXES)
        raise ValueError(f"cannot load {path!r}: supported suffixes are {supported}")
    data = read_regular_file(path)
    try:
        return reader(data, path)
    except (CorruptFileError, UnsafeFileError):
        raise
    except Exception as e:  # parsing boundary: any failure here means a bad file
        # MemoryError and RecursionError included: a garbled header can declare absurd sizes.
        raise CorruptFileError(
            f"{path}: corrupted or unreadable file ({type(e).__name__}: {e})"
        ) from e


def read_regular_file(path, limit=None):
    """The bytes of the regular file ``path``: never more than its size on disk.

    A directory, FIFO, device (``/dev/zero``) or socket, also behind a symlink, raises
    ``CorruptFileError`` before it is read (a FIFO is opened non-blocking); so does a file
    larger than ``limit`` bytes (when given) or one that grows while it is read."""
    path = os.fspath(path)
    check_regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        check_regular(path, os.fstat(f.fileno()).st_mode)
        if limit is not None and size > limit:
            raise CorruptFileError(f"{path}: {size} bytes, more than the {limit} expected")
        data = f.read(size + 1)
    if len(data) != size:
        raise CorruptFileError(f"{path}: the file changed size while it was read")
    return data


def check_regular(path, mode):
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise CorruptFileError(f"{path}: is {kind}, not a regular file; nothing was read")


def read_zip_member(zf, info, path, expected=None):
    """The bytes of the zip member ``info``, its declared size checked before reading:
    ``expected`` bytes if given, and never more than deflate can expand its stored size."""
    if expected is not None and info.file_size != expected:
        raise _bad(path, f"zip member {info.filename!r} holds {info.file_size} bytes, "
                         f"expected {expected}")  # fmt: skip
    if info.file_size > _MAX_ZIP_RATIO * info.compress_size + 1024:
        raise _bad(path, f"zip member {info.filename!r} claims {info.file_size} bytes from "
                         f"{info.compress_size} stored ones (a zip bomb?)")  # fmt: skip
    with zf.open(info) as member:
        raw = member.read(info.file_size + 1)
    if len(raw) != info.file_size:
        raise _bad(path, f"zip member {info.filename!r} does not hold its declared size")
    return raw


def short_repr(value):
    """A bounded repr (a pickle's shared references make ``str`` of a small object huge)."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 40, 40


def _sniff(data):
    """Name the format the first bytes look like, for error messages."""
    if data[:2] == b"PK":
        return "a zip archive (npz or zip-format torch file)"
    if data[:1] == b"\x80":
        return "a pickle (legacy torch file)"
    if len(data) > 8 and data[8:9] == b"{":
        return "a safetensors file"
    return "an unknown format"


def _bad(path, problem, data=None):
    hint = f"; the content looks like {_sniff(data)}" if data is not None else ""
    return CorruptFileError(f"{path}: {problem}{hint}")


def _load_safetensors(data, path):
    if len(data) < 8:
        raise _bad(path, f"only {len(data)} bytes, too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8 or data[8:9] != b"{":
        raise _bad(path, "not a safetensors file (bad header length or header)", data)
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") or {}
    flat = {
        name: _safetensors_array(info, name, path) for name, info in safetensors.deserialize(data)
    }
    if not isinstance(metadata, dict) or _TREE_KEY not in metadata:
        # safetensors.deserialize lists the tensors in no fixed order (it differs between
        # calls on one file): sort by name, so a file loads in the same order every time
        return dict(sorted(flat.items()))
    return _decode_file_tree(metadata[_TREE_KEY], flat, path)


def _safetensors_array(info, name, path):
    dtype, shape, raw = info["dtype"], info["shape"], info["data"]
    if dtype == "BF16":
        return _bf16_to_f32(np.frombuffer(raw, dtype="<u2")).reshape(shape)
    if dtype not in _ST_DTYPES:
        raise _bad(path, f"tensor {name!r} has dtype {dtype}, which minicbam cannot read")
    little_endian = np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")
    # frombuffer views the read-only bytes; copy so callers get an ordinary writable array.
    return np.frombuffer(raw, dtype=little_endian).reshape(shape).copy()


def _load_npz(data, path):
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise _bad(path, "not an npz (zip) archive", data)
    flat = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else None
            if name is None or name in flat:
                torch_zip = info.filename.endswith("/data.pkl")
                hint = "; it looks like a zip-format torch file (.pth)" if torch_zip else ""
                raise _bad(path, f"zip member {info.filename!r} is not a .npy array{hint}")
            flat[name] = _npy_array(read_zip_member(zf, info, path), info.filename, path)
    header = flat.pop(_TREE_KEY, None)
    if header is None:
        return flat
    if header.dtype != np.uint8 or header.ndim != 1:
        raise _bad(path, f"reserved entry {_TREE_KEY!r} is not a uint8 vector")
    return _decode_file_tree(header.tobytes().decode("utf-8"), flat, path)


def _npy_array(raw, member, path):
    """Parse one .npy member; its header's shape and dtype must account for every byte."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        raise _bad(path, f"zip member {member!r} is not a .npy array (no .npy magic)") from None
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise _bad(path, f"zip member {member!r} uses .npy version {version}, not 1.0 or 2.0")
    shape, _fortran, dtype = readers[version](f)
    if dtype.hasobject:
        raise _bad(path, f"zip member {member!r} holds Python objects, which are never unpickled")
    needed = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed != len(raw):
        raise _bad(path, f"zip member {member!r} declares shape {shape} of {dtype} "
                         f"({needed} bytes) but holds {len(raw)} bytes")  # fmt: skip
    f.seek(0)
    array = np.lib.format.read_array(f, allow_pickle=False)
    return array.astype(array.dtype.newbyteorder("="), order="C", copy=False)  # keeps 0-d


def _decode_file_tree(text, flat, path):
    header = json.loads(text)
    if not isinstance(header, dict) or header.get("format") != "minicbam" or "tree" not in header:
        raise _bad(path, f"the {_TREE_KEY!r} header is not a minicbam tree")
    used = set()
    obj = _decode(header["tree"], flat, used, path)
    unused = sorted(set(flat) - used)
    if unused or not isinstance(obj, dict):
        raise _bad(path, f"the tree does not match the stored arrays (unreferenced: {unused})")
    return obj


def _decode(node, flat, used, path):
    if not isinstance(node, dict) or len(node) != 1:
        raise _bad(path, f"malformed tree node {short_repr(node)}")
    ((tag, value),) = node.items()
    if tag == "v" and (value is None or isinstance(value, (bool, int, float, str))):
        return value
    if tag == "a" and isinstance(value, str):
        if value not in flat:
            raise _bad(path, f"the tree references array {value!r}, which is not in the file")
        used.add(value)
        return flat[value]
    if tag in ("l", "t") and isinstance(value, list):
        items = [_decode(v, flat, used, path) for v in value]
        return tuple(items) if tag == "t" else items
    if tag == "d" and isinstance(value, list):
        if not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in value
        ):
            raise _bad(path, "malformed dict node in the tree")
        return {k: _decode(v, flat, used, path) for k, v in value}
    raise _bad(path, f"malformed tree node with tag {tag!r}")


def _bf16_to_f32(bits):
    # bfloat16 is the top half of a float32: shift the 16 bits up and reinterpret.
    return (bits.astype(np.uint32) << 16).view(np.float32)
