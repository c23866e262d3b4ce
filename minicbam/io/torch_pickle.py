"""Reading PyTorch ``.pth`` files without torch: a restricted unpickler and the two containers.

``torch.save`` writes a pickle of the object (state dicts, optimizer state, plain containers)
in which every tensor is a call to a rebuild function (``torch._utils._rebuild_tensor_v2``)
on a *persistent id* naming a storage; the storages' raw bytes live outside the pickle:

* zip format (torch >= 1.6): ``<prefix>/data.pkl`` holds the pickle, ``<prefix>/data/<key>``
  each storage's bytes and an optional ``<prefix>/byteorder`` their byte order.
* legacy format: a magic-number pickle, a protocol-version pickle, a sys-info pickle (byte
  order), the object pickle, a pickle of storage keys, then each storage as int64 numel + raw
  bytes, so tensors can only be built once the whole object pickle has been read.

Unpickling runs whatever callables a pickle names, so a ``.pth`` file from an untrusted source
is a program. ``_RestrictedUnpickler.find_class`` resolves only ``_ALLOWED_GLOBALS``: torch's
tensor- and parameter-rebuild functions (replaced by stand-ins that record a ``_TensorRef``),
``collections.OrderedDict`` and the storage type names (``_StorageType`` tuples carrying the
NumPy dtype); any other global raises ``UnsafeFileError`` before anything from the file runs.
What it hands out is immutable, because a pickle's BUILD opcode can set attributes on it.

Before a pickle is unpickled, ``pickletools.genops`` parses it (executing nothing): unknown
opcodes and short reads fail there, and a memo index larger than the number of opcodes before
it is rejected, because the C unpickler grows its memo to the largest index it meets and one
flipped byte would make it allocate gigabytes. After unpickling, ``_materialize`` turns each
``_TensorRef`` into a NumPy array, checking storage lengths, offsets, sizes and strides so
that no view reads outside its storage.

Sizes are bounded by the file: zip members' declared sizes are checked before they are read
(a storage must hold exactly what the pickle declares, and no member may claim to expand
more than deflate can), each shared container is converted once (memoised by identity, so
a pickle's shared references cannot blow up into an exponential tree), an *expanded*
tensor (more elements than its storage, through a zero stride) comes back as a read-only
view of its storage as PyTorch keeps a view, and the copies of the other tensors may add
up to at most 8x the file's size plus 64 MiB. Malformed input raises ``CorruptFileError``.
"""

import collections
import io
import math
import pickle
import pickletools
import zipfile

import numpy as np

from minicbam.io.serialization import (
    UnsafeFileError,
    _bad,
    _bf16_to_f32,
    read_zip_member,
    short_repr,
)

__all__ = ["load_torch"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


# What find_class hands out is shared by every load, and a pickle's BUILD opcode can set
# attributes on any object it holds: so these are tuples, which have nothing to set.
class _StorageType(collections.namedtuple("_StorageType", "name dtype")):
    """Stand-in for ``torch.FloatStorage`` etc.: the storage's name and element dtype."""

    __slots__ = ()


class _Function(tuple):
    """An allowed function, wrapped so that a pickle cannot modify it (see above)."""

    __slots__ = ()

    def __call__(self, *args):
        return self[0](*args)


class _Storage:
    """A storage referenced by a pickle; its bytes are read after unpickling."""

    def __init__(self, storage_type, key, numel):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class _TensorRef:
    """A tensor to rebuild once the storage bytes are known (legacy files store them last)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # The trailing arguments (requires_grad, backward hooks, metadata) have no NumPy meaning.
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}  # fmt: skip
_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Function((_rebuild_tensor,)),
    ("torch._utils", "_rebuild_tensor"): _Function((_rebuild_tensor,)),
    ("torch._utils", "_rebuild_parameter"): _Function((_rebuild_parameter,)),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function((_rebuild_parameter,)),
    ("collections", "OrderedDict"): collections.OrderedDict,  # a C type: immutable
    **{("torch", n): _StorageType(n, np.dtype(d)) for n, d in _STORAGE_DTYPES.items()},
}


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _unpickle(f, path):
    """Load one pickle from ``f`` with ``_RestrictedUnpickler``, after checking its opcodes."""
    start = f.tell()
    # The C unpickler grows its memo to the largest index it meets, so one flipped byte
    # (BINPUT -> LONG_BINPUT 1e9) makes it allocate and clear gigabytes. Real pickles number
    # memo entries in order, so an index is never larger than the count of opcodes before it.
    # genops only parses (it executes nothing) and rejects unknown opcodes and short reads.
    for count, (op, arg, pos) in enumerate(pickletools.genops(f)):
        if op.name in _MEMO_OPS and arg > count:
            raise _bad(path, f"pickle memo index {arg} at byte {pos} is out of range")
    f.seek(start)
    return _RestrictedUnpickler(f, path).load()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``_ALLOWED_GLOBALS`` and turns storages into ``_Storage``."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeFileError(
                f"{self.path}: the pickle asks for the global {module}.{name}, which is not in "
                "minicbam's allow-list of tensor-rebuilding functions; nothing was executed"
            )
        return found

    def persistent_load(self, pid):
        # zip format: ('storage', type, key, location, numel); legacy adds view metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _bad(self.path, f"unexpected persistent id {short_repr(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise _bad(self.path, "storage views (pre-1.0 torch files) are not supported")
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str)):
            raise _bad(self.path, f"malformed storage reference {short_repr(pid)}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise _bad(self.path, f"storage {key!r} has an invalid size {numel!r}")
        return _Storage(storage_type, key, numel)


def load_torch(data, path):
    """Read the bytes ``data`` of the PyTorch file ``path`` (zip or legacy format)."""
    if data[:4] == b"PK\x03\x04":
        return _load_torch_zip(data, path)
    if data[:1] == b"\x80":
        return _load_torch_legacy(data, path)
    raise _bad(path, "not a PyTorch file (neither a zip archive nor a pickle)", data)


def _load_torch_zip(data, path):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise _bad(path, f"expected one '<prefix>/data.pkl' record, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        obj = _unpickle(io.BytesIO(read_zip_member(zf, infos[pickles[0]], path)), path)
        order = infos.get(prefix + "byteorder")
        byteorder = read_zip_member(zf, order, path) if order is not None else b"little"
        if len(byteorder) > 16:
            raise _bad(path, "the byteorder record is not 'little' or 'big'")

        def read_storage(storage):
            name = prefix + "data/" + storage.key
            if name not in infos:
                raise _bad(path, f"storage record {name!r} is missing")
            # The pickle declares the storage's size: checked before the bytes are read.
            itemsize = storage.storage_type.dtype.itemsize
            if infos[name].file_size != storage.numel * itemsize:
                raise _bad(
                    path,
                    f"storage {storage.key!r} holds {infos[name].file_size} bytes, expected "
                    f"{storage.numel} x {itemsize}",
                )
            return read_zip_member(zf, infos[name], path)

        return _materialize(obj, read_storage, byteorder.strip().decode("ascii"), path, len(data))


def _load_torch_legacy(data, path):
    f = io.BytesIO(data)
    magic, protocol = (_unpickle(f, path) for _ in range(2))
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
        raise _bad(path, "not a legacy torch.save file (bad magic number or protocol)")
    sys_info = _unpickle(f, path)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj = _unpickle(f, path)
    keys = _unpickle(f, path)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _bad(path, "the storage key list is malformed")
    itemsizes = {s.key: s.storage_type.dtype.itemsize for s in _iter_storages(obj)}
    blobs = {}
    for key in keys:
        numel = int.from_bytes(_read_exact(f, 8, key, path), "little", signed=True)
        if numel < 0:
            raise _bad(path, f"storage {key!r} has a negative size")
        if key not in itemsizes:  # its element size, hence its byte length, would be unknown
            raise _bad(path, f"storage {key!r} is listed but no tensor uses it")
        blobs[key] = _read_exact(f, numel * itemsizes[key], key, path)

    def read_storage(storage):
        if storage.key not in blobs:
            raise _bad(path, f"storage {storage.key!r} is referenced but not stored")
        return blobs[storage.key]

    return _materialize(obj, read_storage, "little" if little else "big", path, len(data))


def _read_exact(f, n, key, path):
    chunk = f.read(n)
    if len(chunk) != n:
        raise _bad(path, f"truncated: storage {key!r} needs {n} bytes, only {len(chunk)} left")
    return chunk


def _iter_storages(obj):
    stack = [obj]
    seen = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, _Storage):
            yield node
        elif isinstance(node, _TensorRef):
            stack.append(node.storage)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _materialize(obj, read_storage, byteorder, path, file_size):
    """Replace every ``_TensorRef`` in ``obj`` by a NumPy array; OrderedDicts become dicts.

    Each container and tensor is converted once (a pickle's memo lets a few hundred bytes
    reference one list from thousands of places: rebuilt per reference, the tree would be
    exponential), so what comes back shares what the pickle shared and its size is bounded
    by the pickle's and the storages'."""
    if byteorder not in ("little", "big"):
        raise _bad(path, f"unknown byte order {byteorder!r}")
    storages = {}
    budget = _CopyBudget(path, _COPY_FACTOR * file_size + _COPY_SLACK)

    def storage_array(storage):
        if storage.key not in storages:
            dtype = storage.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
            raw = read_storage(storage)
            if len(raw) != storage.numel * dtype.itemsize:
                raise _bad(
                    path,
                    f"storage {storage.key!r} holds {len(raw)} bytes, expected "
                    f"{storage.numel} x {dtype.itemsize}",
                )
            flat = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
            if storage.storage_type.name == "BFloat16Storage":
                flat = _bf16_to_f32(flat)
            flat.flags.writeable = False  # shared by the views of expanded tensors
            storages[storage.key] = flat
        return storages[storage.key]

    done, active = {}, set()

    def walk(node):
        if id(node) in done:
            return done[id(node)]
        if id(node) in active:
            raise _bad(path, "a container contains itself")
        active.add(id(node))
        out = convert(node)
        active.discard(id(node))
        done[id(node)] = out
        return out

    def convert(node):
        if isinstance(node, _TensorRef):
            return _tensor_array(node, storage_array, path, budget)
        if isinstance(node, _Storage):
            ref = _TensorRef(node, 0, (node.numel,), (1,))
            return _tensor_array(ref, storage_array, path, budget)
        if isinstance(node, (_StorageType, _Function)):
            raise _bad(path, "a torch global is used as a value, not to rebuild a tensor")
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if type(node) in (list, tuple):
            return type(node)(walk(v) for v in node)
        return node

    return walk(obj)  # ids are stable: every node stays reachable from obj meanwhile


# Copies of tensors may add up to this many times the file's size (plus the slack): tensors
# viewing one storage from several places are copied once each, and a file that claims far
# more is refused rather than exhausting memory.
_COPY_FACTOR, _COPY_SLACK = 8, 64 * 2**20


class _CopyBudget:
    def __init__(self, path, limit):
        self.path, self.left = path, limit

    def take(self, nbytes, key):
        self.left -= nbytes
        if self.left < 0:
            raise _bad(
                self.path,
                f"tensor of storage {key!r} would bring the loaded tensors past "
                f"{_COPY_FACTOR}x the file's size",
            )


def _tensor_array(ref, storage_array, path, budget):
    """The tensor ``ref`` describes, bounds-checked first.

    A tensor with no more elements than its storage is copied (an ordinary writable array).
    An expanded one (a zero stride: more elements than the storage holds) comes back as a
    read-only view of the storage, as PyTorch keeps a view: materialising it could turn a
    few hundred bytes into gigabytes."""
    if not isinstance(ref.storage, _Storage):
        raise _bad(path, "a tensor is rebuilt from something that is not a storage")
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)):
        raise _bad(path, f"tensor of storage {ref.storage.key!r} has a malformed size/stride")
    if not isinstance(offset, int) or offset < 0 or min(size + stride, default=0) < 0:
        raise _bad(path, f"tensor of storage {ref.storage.key!r} has a negative offset/size/stride")
    flat = storage_array(ref.storage)
    if 0 in size:
        return np.empty(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise _bad(
            path,
            f"tensor of storage {ref.storage.key!r} reads element {last} of "
            f"a storage of {flat.size}",
        )
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], size, [s * item for s in stride], writeable=False
    )
    numel = math.prod(size)
    if numel > flat.size:
        return view
    budget.take(numel * item, ref.storage.key)
    return view.copy()


def _is_int_tuple(value):
    return isinstance(value, tuple) and all(type(v) is int for v in value)
