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
problem; a missing file raises ``FileNotFoundError``.
"""

import contextlib
import io
import json
import os
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
_ST_SAVE_KINDS = "biuf"  # safetensors has no complex type
_NPZ_SAVE_KINDS = "biufc"


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
    tree = _encode(obj, (), arrays, _ST_SAVE_KINDS if suffix == ".safetensors" else _NPZ_SAVE_KINDS)
    header = json.dumps({"format": "minicbam", "version": 1, "tree": tree})
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
    if array.dtype.kind not in kinds:
        raise TypeError(f"array at {where!r}: dtype {array.dtype} cannot be saved in this format")
    if where == _TREE_KEY:
        raise ValueError(f"the flat name {_TREE_KEY!r} is reserved for minicbam's tree")
    if where in arrays:
        raise ValueError(f"two arrays would be stored under the flat name {where!r}")
    arrays[where] = array
    return where


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
    with open(path, "rb") as f:
        data = f.read()
    try:
        return reader(data, path)
    except (CorruptFileError, UnsafeFileError):
        raise
    except Exception as e:  # parsing boundary: any failure here means a bad file
        # MemoryError and RecursionError included: a garbled header can declare absurd sizes.
        raise CorruptFileError(
            f"{path}: corrupted or unreadable file ({type(e).__name__}: {e})"
        ) from e


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
        return dict(sorted(flat.items()))  # safetensors orders tensors by offset, not by name
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
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        flat = {name: npz[name] for name in npz.files}
    # np.load hands back a member without the .npy magic (any name) as raw bytes.
    stray = [name for name, value in flat.items() if not isinstance(value, np.ndarray)]
    if stray:
        torch_zip = any(name.endswith("/data.pkl") for name in stray)
        hint = "; it looks like a zip-format torch file (.pth)" if torch_zip else ""
        raise _bad(path, f"zip member {stray[0]!r} is not a .npy array{hint}")
    header = flat.pop(_TREE_KEY, None)
    if header is None:
        return flat
    if header.dtype != np.uint8 or header.ndim != 1:
        raise _bad(path, f"reserved entry {_TREE_KEY!r} is not a uint8 vector")
    return _decode_file_tree(header.tobytes().decode("utf-8"), flat, path)


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
        raise _bad(path, f"malformed tree node {str(node)[:80]!r}")
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
