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
import os
import pickle
import signal
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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
    with pytest.raises(CorruptFileError, match=r"zip member 'w' is not a \.npy array"):
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
