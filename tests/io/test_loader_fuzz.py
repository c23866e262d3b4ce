"""Hostile and damaged files through ``mc.load``: only clear errors come out, nothing runs.

Extends tests/io/test_serialization.py (which flips and truncates whole files) with
structure-aware damage that gets past the outer container, so the inner parsers see it:

* zip members (npz ``.npy`` members, torch ``data.pkl`` / storages / ``byteorder``) are
  damaged and the archive is rebuilt with valid CRCs;
* safetensors headers and minicbam's JSON tree are edited as JSON and re-serialised with a
  correct length prefix;
* files are mislabelled (one format's bytes under another format's suffix), then damaged.

Whatever the damage, ``load`` may only return or raise ``CorruptFileError`` /
``UnsafeFileError`` (both ``ValueError``) naming the path, or ``FileNotFoundError``; a
SIGALRM timer turns a hang into a failure. Hostile pickles (``__reduce__`` to os.system,
builtins.exec/eval, subprocess) in every layout, protocol and pickle slot execute nothing
(a marker file stays absent) and raise ``UnsafeFileError`` naming the global. Finally,
state dicts with wrong keys or shapes loaded into a model name every offending key and
leave the model untouched.
"""

import contextlib
import io
import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam import models, nn
from minicbam.io.serialization import CorruptFileError, UnsafeFileError, load, save

ALLOWED = (CorruptFileError, UnsafeFileError, FileNotFoundError)
SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".pth.tar", ".bin")
LOAD_SECONDS = 10  # a load of these tiny files takes milliseconds; more is a hang
FUZZ = settings(
    max_examples=10 * settings.default.max_examples,  # dev 100, ci 200, intense 3000
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LEGACY_HEADER = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]


class LoadHung(BaseException):
    """Raised by the alarm; a BaseException, so ``load``'s ``except Exception`` keeps it."""


@contextlib.contextmanager
def time_limit(seconds):
    def on_alarm(signum, frame):
        raise LoadHung(f"load did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_checked(path):
    """``load(path)``, asserting that only the allowed, path-naming errors come out."""
    try:
        with time_limit(LOAD_SECONDS):
            return load(path)
    except ALLOWED as e:
        assert str(path) in str(e), f"error does not name the file: {e}"
        return e
    except LoadHung:
        raise
    except BaseException as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"load({path.name}) raised {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- sources


def checkpoint(rng):
    return {
        "epoch": 2,
        "arch": "digits-cnn",
        "model": {
            "conv.weight": rng.standard_normal((3, 1, 3, 3)).astype(np.float32),
            "bn.running_var": rng.random(3),
            "bn.num_batches_tracked": np.array(5, dtype=np.int64),
            "labels": np.arange(4, dtype=np.int32),
        },
        "betas": (0.9, 0.999),
        "milestones": [1, 2],
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> bytes of small valid files: ours, flat ones, and torch's zip and legacy."""
    tmp = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(1)
    files = {}
    for suffix in (".npz", ".safetensors"):
        save(checkpoint(rng), tmp / f"tree{suffix}")
        files[f"tree{suffix}"] = (tmp / f"tree{suffix}").read_bytes()
    np.savez(tmp / "flat.npz", w=np.ones((2, 2), np.float32), b=np.zeros(2))
    files["flat.npz"] = (tmp / "flat.npz").read_bytes()
    try:
        import torch
    except ImportError:
        return files
    state = {
        "w": torch.arange(6.0).reshape(2, 3).t(),  # strided view
        "n": torch.arange(3),
        "h": torch.ones(2, dtype=torch.float16),
        "b": torch.tensor([1.5, 2.0], dtype=torch.bfloat16),
        "meta": {"epoch": 1, "name": "x"},
    }
    for name, zip_format in (("torch_zip.pth", True), ("torch_legacy.pth", False)):
        torch.save(state, tmp / name, _use_new_zipfile_serialization=zip_format)
        files[name] = (tmp / name).read_bytes()
    return files


def test_sources_load(sources, tmp_path):
    for name, data in sources.items():
        (tmp_path / name).write_bytes(data)
        assert isinstance(load(tmp_path / name), dict), name


# ----------------------------------------------------------------------------- damage


@st.composite
def damaged_bytes(draw, data):
    """``data`` truncated, with bytes flipped, inserted, deleted or a chunk repeated."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat", "zero"]))
        n = len(data)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        if kind == "truncate":
            del data[i:]
        elif kind == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif kind == "repeat":
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
        else:
            data[i : i + draw(st.integers(1, 16))] = bytes(min(16, n - i))
    return bytes(data)


def rebuild_zip(data, member, new_content):
    """The zip ``data`` with ``member``'s content replaced (CRCs recomputed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = new_content if info.filename == member else src.read(info.filename)
            dst.writestr(info, content)
    return out.getvalue()


@st.composite
def damaged_zip_member(draw, data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        member = draw(st.sampled_from(names))
        content = zf.read(member)
    if not content:
        return rebuild_zip(data, member, draw(st.binary(max_size=16)))
    return rebuild_zip(data, member, draw(damaged_bytes(content)))


JSON_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.sampled_from([-1, 0, 1, 2**31, 2**62, 10**30]),
    st.text(max_size=8),
    st.sampled_from(["F32", "F64", "BF16", "I64", "C64", "O", "STR", "a", "d", "v", "l", "t"]),
    st.lists(st.integers(-2, 2**40), max_size=4),
    st.lists(st.lists(st.integers(-1, 3), max_size=2), max_size=3),
    st.dictionaries(st.sampled_from(["a", "d", "v", "l", "t", "x"]), st.integers(0, 3), max_size=2),
)


def json_paths(node, prefix=()):
    """Every (path, value) of a JSON document, containers included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from json_paths(v, prefix + (i,))


def json_edit(draw, doc):
    """Replace, delete or duplicate one node of ``doc`` (a parsed JSON document)."""
    paths = [p for p, _ in json_paths(doc) if p]
    if not paths:
        return draw(JSON_JUNK)
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
    if action == "replace":
        parent[key] = draw(JSON_JUNK)
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, parent[key])
    else:
        parent[str(key) + "_copy"] = parent[key]
    return doc


@st.composite
def edited_safetensors(draw, data):
    """A safetensors file whose JSON header (tensor table or minicbam tree) is edited."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    tree_key = "__minicbam__"
    if draw(st.booleans()) and tree_key in header.get("__metadata__", {}):
        tree = json.loads(header["__metadata__"][tree_key])
        header["__metadata__"][tree_key] = json.dumps(json_edit(draw, tree))
    else:
        header = json_edit(draw, header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def edited_npz_tree(draw, data):
    """An npz of ours whose JSON tree member is edited (the zip stays valid)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        raw = zf.read("__minicbam__.npy")
    header_len = (
        struct.unpack("<H", raw[8:10])[0] if raw[6] == 1 else struct.unpack("<I", raw[8:12])[0]
    )
    start = (10 if raw[6] == 1 else 12) + header_len
    tree = json.loads(raw[start:].decode())
    text = json.dumps(json_edit(draw, tree)).encode()
    member = io.BytesIO()
    np.lib.format.write_array(member, np.frombuffer(text, np.uint8), allow_pickle=False)
    return rebuild_zip(data, "__minicbam__.npy", member.getvalue())


@st.composite
def damaged_file(draw, sources):
    name = draw(st.sampled_from(sorted(sources)))
    data = sources[name]
    suffix = "." + name.split(".", 1)[1]
    strategies = [damaged_bytes(data)]
    if data[:2] == b"PK":
        strategies.append(damaged_zip_member(data))
    if name == "tree.safetensors":
        strategies.append(edited_safetensors(data))
    if name == "tree.npz":
        strategies.append(edited_npz_tree(data))
    content = draw(st.one_of(*strategies))
    if draw(st.integers(0, 4)) == 0:  # mislabel one in five
        suffix = draw(st.sampled_from(SUFFIXES))
    return name, suffix, content


@FUZZ
@given(data=st.data())
def test_damaged_files_raise_only_clear_errors(tmp_path, sources, data):
    _source, suffix, content = data.draw(damaged_file(sources))
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(content)
    result = load_checked(path)
    if not isinstance(result, Exception) and suffix in (".npz", ".safetensors"):
        assert isinstance(result, dict)
        assert_only_arrays_and_scalars(result)


def assert_only_arrays_and_scalars(node, where="root"):
    """What save() can write: never raw bytes or other objects smuggled through."""
    if isinstance(node, dict):
        for k, v in node.items():
            assert isinstance(k, (str, int)), (where, k)
            assert_only_arrays_and_scalars(v, f"{where}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            assert_only_arrays_and_scalars(v, f"{where}.{i}")
    else:
        assert node is None or isinstance(node, (np.ndarray, bool, int, float, str)), (
            f"{where}: {type(node).__name__}"
        )


@FUZZ
@given(data=st.data())
def test_mislabelled_files_raise_clear_errors(tmp_path, sources, data):
    """Intact bytes of one format under another format's suffix."""
    name = data.draw(st.sampled_from(sorted(sources)))
    suffix = data.draw(st.sampled_from(SUFFIXES))
    path = tmp_path / f"mislabelled{suffix}"
    path.write_bytes(sources[name])
    result = load_checked(path)
    torch_suffix = suffix not in (".npz", ".safetensors")
    if (name.startswith("torch") and torch_suffix) or name.endswith(suffix):
        assert isinstance(result, dict), result  # correctly labelled: it loads
    else:
        assert isinstance(result, CorruptFileError), result


def test_every_truncation_of_every_source(tmp_path, sources):
    """Exhaustive on small files: each prefix fails cleanly (or, for a prefix that happens
    to be a complete file, loads)."""
    for name, data in sources.items():
        path = tmp_path / name
        step = max(1, len(data) // 300)
        for cut in range(0, len(data), step):
            path.write_bytes(data[:cut])
            result = load_checked(path)
            assert isinstance(result, Exception), f"{name} cut at {cut} of {len(data)} loaded"


@pytest.mark.parametrize(
    "shape", ["(1000000000000,)", "(100000, 100000, 100000)", "(-1,)", "(2, 'a')", "()"]
)
def test_npz_member_declaring_absurd_shapes(tmp_path, shape):
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    path = tmp_path / "absurd.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", member + bytes(4))  # 4 bytes: not even one float64
    assert isinstance(load_checked(path), CorruptFileError)


def test_npz_member_without_npy_magic_is_refused(tmp_path):
    """np.load returns such a member as raw bytes; load must not hand those back."""
    path = tmp_path / "flat.npz"
    np.savez(path, w=np.ones(3), b=np.zeros(2))
    with zipfile.ZipFile(path) as zf:
        member = zf.read("w.npy")
    path.write_bytes(rebuild_zip(path.read_bytes(), "w.npy", b"\x00" + member[1:]))
    with pytest.raises(CorruptFileError, match=r"zip member 'w(\.npy)?' is not a \.npy array"):
        load(path)


def test_torch_zip_mislabelled_as_npz(tmp_path, torch):
    path = tmp_path / "weights.npz"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CorruptFileError, match=r"looks like a zip-format torch file"):
        load(path)


def test_npz_with_pickled_object_member_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    assert isinstance(load_checked(path), CorruptFileError)


def test_missing_file_and_missing_directory(tmp_path):
    for path in (tmp_path / "absent.npz", tmp_path / "no" / "dir" / "x.safetensors"):
        with pytest.raises(FileNotFoundError):
            load(path)


# ----------------------------------------------------------------------------- hostile


def marker_command(marker):
    return f"touch {marker}"


class ViaSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (marker_command(self.marker),)


class ViaExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class ViaEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class ViaPopen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


class ViaCheckCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.check_call, (["touch", str(self.marker)],)


# The global as the pickle names it: protocols < 3 write Python 2's module names
# (``__builtin__``, ``commands``), which find_class receives unmapped.
PAYLOADS = {
    "os.system": (ViaSystem, r"the global (posix|nt|os)\.system"),
    "builtins.exec": (ViaExec, r"the global (builtins|__builtin__)\.exec"),
    "builtins.eval": (ViaEval, r"the global (builtins|__builtin__)\.eval"),
    "subprocess.Popen": (ViaPopen, r"the global (subprocess|commands)\.Popen"),
    "subprocess.check_call": (ViaCheckCall, r"the global (subprocess|commands)\.check_call"),
}


def tensor_free_checkpoint(payload):
    return {"epoch": 1, "state_dict": {"w": [1.0, 2.0]}, "evil": payload}


def write_hostile(path, layout, payload, protocol):
    """``payload`` pickled into ``layout``: a bare pickle, one of the five legacy pickles,
    or a zip's data.pkl."""
    evil = pickle.dumps(tensor_free_checkpoint(payload), protocol=protocol)
    if layout == "bare":
        path.write_bytes(evil)
    elif layout.startswith("legacy"):
        slot = int(layout[-1])  # which of magic, protocol, sys_info, object, keys is hostile
        parts = [pickle.dumps(h, protocol=2) for h in LEGACY_HEADER]
        parts += [pickle.dumps({"epoch": 1}, protocol=2), pickle.dumps([], protocol=2)]
        parts[slot] = evil
        path.write_bytes(b"".join(parts))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", evil)
            zf.writestr("archive/byteorder", "little")


@given(
    payload=st.sampled_from(sorted(PAYLOADS)),
    layout=st.sampled_from(["bare", "zip"] + [f"legacy{i}" for i in range(5)]),
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    suffix=st.sampled_from([".pth", ".pt", ".pth.tar", ".bin"]),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_pickles_execute_nothing(tmp_path, payload, layout, protocol, suffix):
    marker = tmp_path / f"pwned-{payload}-{layout}-{protocol}"
    cls, global_name = PAYLOADS[payload]
    path = tmp_path / f"evil{suffix}"
    write_hostile(path, layout, cls(marker), protocol)
    if protocol < 2 and layout in ("bare", "legacy0"):
        # Protocols 0 and 1 have no b"\x80" header: refused as no torch file, unparsed.
        with pytest.raises(CorruptFileError, match="not a PyTorch file"):
            load(path)
    else:
        with pytest.raises(UnsafeFileError, match=global_name) as info, time_limit(LOAD_SECONDS):
            load(path)
        assert "nothing was executed" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists(), f"{payload} in {layout} (protocol {protocol}) RAN"


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_payloads_are_real(tmp_path, payload):
    """Guards the test above: plain pickle does run each payload."""
    marker = tmp_path / "ran"
    obj = pickle.loads(pickle.dumps(PAYLOADS[payload][0](marker)))
    if isinstance(obj, subprocess.Popen):
        obj.wait()
    assert marker.exists()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_torch_saved_checkpoint_with_a_payload_after_real_tensors(
    tmp_path, torch, zip_format, payload
):
    """torch.save itself writes the payload, after tensors the allow-list accepts."""
    marker = tmp_path / "pwned"
    cls, global_name = PAYLOADS[payload]
    state = {"conv.weight": torch.randn(2, 1, 3, 3), "n": torch.arange(3), "z": cls(marker)}
    path = tmp_path / "evil.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeFileError, match=global_name):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("__builtin__", "exec"),
        ("posix", "system"),
        ("torch.serialization", "load"),
        ("numpy", "load"),
        ("pickle", "loads"),
    ],
)
def test_protocol0_inst_opcode_goes_through_the_allow_list(tmp_path, module, name):
    """Protocol 0's INST opcode (``i module\\nname\\n``) also calls find_class."""
    marker = tmp_path / "pwned"
    body = f"(S'{marker_command(marker)}'\ni{module}\n{name}\n.".encode()
    path = tmp_path / "inst.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", body)
    with pytest.raises(UnsafeFileError, match=rf"{module}\.{name}"):
        load(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- state dicts


def small_model():
    mc.manual_seed(0)
    return models.DigitsCNN(attention="cbam", width=4)


def host_state(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def saved_states(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("states")
    model = small_model()
    paths = {}
    for suffix in (".npz", ".safetensors"):
        save(model.state_dict(), tmp / f"digits{suffix}")
        paths[suffix] = tmp / f"digits{suffix}"
    return paths


@settings(
    max_examples=2 * settings.default.max_examples,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_wrong_keys_and_shapes_are_named_and_nothing_is_copied(saved_states, data):
    suffix = data.draw(st.sampled_from(sorted(saved_states)))
    state = mc.load(saved_states[suffix])
    keys = sorted(state)
    dropped = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
    left = [k for k in keys if k not in dropped]
    renamed = data.draw(st.lists(st.sampled_from(left), unique=True, max_size=2))
    left = [k for k in left if k not in renamed]
    reshaped = data.draw(st.lists(st.sampled_from(left), unique=True, max_size=2))
    if not (dropped or renamed or reshaped):
        dropped = [keys[0]]
    for k in dropped:
        del state[k]
    for k in renamed:
        state["module." + k] = state.pop(k)
    for k in reshaped:
        state[k] = np.zeros(state[k].shape + (2,), state[k].dtype)

    model = small_model()
    model.train(False)
    before = host_state(model)
    for k in before:  # make a silent copy detectable
        if k in state and state[k].shape == before[k].shape:
            state[k] = state[k] + 1
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "loading state_dict for DigitsCNN" in message
    for k in dropped + renamed:
        assert f'"{k}"' in message.split("Missing key(s)")[1].split("\n")[0], (k, message)
    for k in renamed:
        assert f'"module.{k}"' in message.split("Unexpected key(s)")[1].split("\n")[0]
    for k in reshaped:
        assert f"size mismatch for {k}:" in message
    after = host_state(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} was copied")


def test_strict_false_still_refuses_wrong_shapes(saved_states):
    state = mc.load(saved_states[".npz"])
    state["fc.weight"] = state["fc.weight"].T.copy()
    state["extra"] = np.zeros(1)
    del state["fc.bias"]
    model = small_model()
    with pytest.raises(RuntimeError, match=r"size mismatch for fc\.weight") as info:
        model.load_state_dict(state, strict=False)
    assert "Missing" not in str(info.value) and "extra" not in str(info.value)


def test_torch_checkpoint_of_another_architecture(tmp_path, torch):
    """A real torch.save'd state dict with different widths: every mismatch is named."""
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    torch.save(torch_model.state_dict(), tmp_path / "other.pth")
    state = load(tmp_path / "other.pth")
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 10)
    )
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    for key in (
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "4.weight",
    ):
        assert f"size mismatch for {key}:" in message, key
    assert "size mismatch for 1.num_batches_tracked" not in message
    assert "size mismatch for 4.bias" not in message


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGALRM")
def test_time_limit_catches_a_hang():
    """The hang guard itself works (and is not swallowed by load's except Exception)."""
    with pytest.raises(LoadHung), time_limit(0.05):
        while True:
            pass


# --------------------------------------------------- small on disk, huge in memory, endless
# Adversarial files built here byte by byte: each is a few hundred bytes and must load in
# bounded time and memory (as a view, a shared structure) or raise CorruptFileError.

try:
    import torch as _torch
except ImportError:  # the minicbam half of each test still runs
    _torch = None


def shared_tree(depth, width):
    """A pickle-friendly tree of ``width ** depth`` leaves but only ``depth`` lists."""
    node = [np.float32(0).item()]
    for _ in range(depth):
        node = [node] * width
    return node


@settings(max_examples=15, deadline=None)
@given(depth=st.integers(20, 60), width=st.integers(2, 4), zip_format=st.booleans())
def test_shared_references_load_in_linear_time(tmp_path_factory, depth, width, zip_format):
    tree = shared_tree(depth, width)
    pkl = pickle.dumps({"tree": tree}, protocol=2)  # the memo shares every repeated list
    assert len(pkl) < 2000
    path = tmp_path_factory.mktemp("shared") / "m.pth"
    if zip_format:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/version", "3\n")  # torch.load needs it; minicbam ignores it
    else:
        path.write_bytes(b"".join(pickle.dumps(h, 2) for h in LEGACY_HEADER) + pkl
                         + pickle.dumps([], 2))  # fmt: skip
    out = load_checked(path)
    assert isinstance(out, dict), out
    node = out["tree"]
    for _ in range(depth):  # the structure comes back shared, as the pickle shared it
        assert len(node) == width and all(child is node[0] for child in node)
        node = node[0]
    assert node == [0.0]
    if _torch is not None and zip_format:
        back = _torch.load(path, weights_only=True)["tree"]
        assert back[0] is back[-1]


def _op_str(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _op_tuple(items):
    return b"(" + b"".join(items) + b"t"


def tensor_ops(size, stride, offset, numel):
    """Pickle opcodes of ``torch._utils._rebuild_tensor_v2`` on float storage "0"."""
    num = lambda i: b"J" + struct.pack("<i", i)
    pid = _op_tuple([_op_str("storage"), b"ctorch\nFloatStorage\n", _op_str("0"),
                     _op_str("cpu"), num(numel)]) + b"Q"  # fmt: skip
    args = _op_tuple([pid, num(offset), _op_tuple(map(num, size)), _op_tuple(map(num, stride)),
                      b"\x89", b"ccollections\nOrderedDict\n)R"])  # fmt: skip
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def dict_pickle(items):
    return b"\x80\x02}(" + b"".join(_op_str(k) + v for k, v in items.items()) + b"u."


def write_torch_zip(path, pkl, storages):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")  # torch.load needs it; minicbam ignores it
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)


def _expanded_zip(path, size, stride, numel, offset=0):
    pkl = dict_pickle({"v": tensor_ops(size, stride, offset, numel)})
    data = np.arange(numel, dtype="<f4")
    write_torch_zip(path, pkl, {"0": data.tobytes()})
    return data


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.tuples(st.integers(1, 1 << 12), st.booleans()), min_size=1, max_size=4),
    numel=st.integers(1, 8),
)
def test_expanded_tensors_come_back_as_views(tmp_path_factory, dims, numel):
    """Zero strides (expand) make a 356-byte file describe gigabytes; PyTorch keeps a view."""
    size = tuple(n for n, _ in dims)
    stride = tuple(0 if zero or n == 1 else 1 for n, zero in dims)
    if sum((n - 1) * s for n, s in zip(size, stride)) >= numel:
        stride = tuple(0 for _ in size)  # keep every read inside the storage
    path = tmp_path_factory.mktemp("expand") / "m.pth"
    data = _expanded_zip(path, size, stride, numel)
    out = load_checked(path)
    assert not isinstance(out, Exception), out
    v = out["v"]
    assert v.shape == size
    # Compared at a few positions: materialising either side could need gigabytes.
    points = [tuple(0 for _ in size), tuple(n - 1 for n in size), tuple(n // 2 for n in size)]
    for point in points:
        assert v[point] == data[sum(i * s for i, s in zip(point, stride))]
    if v.size > numel:  # more elements than the storage: a read-only view, not a copy
        extent = sum((n - 1) * abs(s) for n, s in zip(v.shape, v.strides)) + v.itemsize
        assert not v.flags.writeable and 0 in v.strides and extent <= numel * 4
    if _torch is not None:
        t = _torch.load(path, weights_only=True)["v"]
        assert tuple(t.shape) == size and tuple(t.stride()) == stride
        assert all(float(t[point]) == v[point] for point in points)


def test_a_gigabyte_expanded_tensor_is_a_view(tmp_path):
    path = tmp_path / "m.pth"
    _expanded_zip(path, (1 << 15, 1 << 15), (0, 0), 1)
    assert path.stat().st_size < 1000
    v = load_checked(path)["v"]
    assert v.shape == (1 << 15, 1 << 15) and v.strides == (0, 0) and float(v[-1, -1]) == 0.0


def test_many_copies_of_one_storage_are_bounded(tmp_path):
    numel = 1 << 16  # 256 KiB of storage, viewed whole by 300 tensors: 75 MiB of copies
    pkl = dict_pickle({f"v{i}": tensor_ops((numel,), (1,), 0, numel) for i in range(300)})
    write_torch_zip(tmp_path / "m.pth", pkl, {"0": bytes(4 * numel)})
    err = load_checked(tmp_path / "m.pth")
    assert isinstance(err, CorruptFileError) and "8x the file's size" in str(err)


def test_a_container_containing_itself_is_refused_or_shared(tmp_path):
    loop = []
    loop.append(loop)
    with zipfile.ZipFile(tmp_path / "m.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"loop": loop}, protocol=2))
    err = load_checked(tmp_path / "m.pth")
    assert isinstance(err, CorruptFileError) and "contains itself" in str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_non_regular_files_are_refused_before_reading(tmp_path, suffix, kind):
    path = tmp_path / ("x" + suffix)
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would hang
    else:
        path.mkdir()
    err = load_checked(path)
    assert isinstance(err, CorruptFileError), err
    assert "not a regular file" in str(err)


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.npz"
    member = io.BytesIO()
    np.lib.format.write_array(member, np.zeros(1 << 24, np.uint8))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.npy", member.getvalue())  # 16 MiB from a few dozen bytes
    assert path.stat().st_size < 2000
    err = load_checked(path)
    assert isinstance(err, CorruptFileError) and "zip bomb" in str(err)


# --------------------------------------------------------------- saves that load back
_KEYS = st.one_of(
    st.text(max_size=4), st.integers(-3, 3),
    st.sampled_from(["__metadata__", "__minicbam__", "", ".", "a.b", "\udc80", True]),
    st.floats(allow_nan=False), st.tuples(st.integers(0, 2)),
)  # fmt: skip
_DTYPES = ["f4", ">f4", "f8", "f2", "i1", "u2", "i8", "?", "c8", "c16", "g", "O", "U2", "M8[s]",
           "V4", [("x", "f4")]]  # fmt: skip


@st.composite
def _arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    base = np.zeros(shape, dtype)
    if draw(st.booleans()) and base.ndim:  # non-contiguous views
        base = np.zeros(shape[:-1] + (shape[-1] * 2,), dtype)[..., ::2]
    return base


_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3), _arrays(),
    st.sampled_from([np.float32(1.5), np.int64(3), np.bool_(True)]),
)  # fmt: skip
_TREES = st.recursive(
    _LEAVES,
    lambda kids: st.one_of(
        st.dictionaries(_KEYS, kids, max_size=3),
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
    ),
    max_leaves=8,
)


def _same_tree(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_tree(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        a = np.asarray(a)
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype.newbyteorder("=")
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert type(a) is type(b) and a == b


@FUZZ
@given(
    tree=st.dictionaries(_KEYS, _TREES, max_size=4),
    suffix=st.sampled_from([".npz", ".safetensors"]),
)
@example(tree={"__metadata__": np.zeros(2)}, suffix=".safetensors")  # the examples
@example(tree={"a": np.zeros(2, np.longdouble)}, suffix=".safetensors")
@example(tree={"a": np.arange(6.0).reshape(2, 3)[:, ::2], 3: np.zeros(1, ">f4")}, suffix=".npz")
def test_a_save_either_loads_back_exactly_or_is_refused(tmp_path_factory, tree, suffix):
    path = tmp_path_factory.mktemp("rt") / ("f" + suffix)
    try:
        save(tree, path)
    except (TypeError, ValueError) as e:
        assert not path.exists(), "a refused save left a file"
        assert str(e)
        return
    _same_tree(tree, load_checked(path))
