"""minicbam.io.serialization: safetensors/npz round trips, atomic writes, torch files without torch.

Torch-free tests build PyTorch zip archives by hand from raw pickle opcodes; the tests that
need real ``torch.save`` output skip when torch is absent.
"""

import os
import pickle
import shlex
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minicbam.io import serialization
from minicbam.io.serialization import CorruptFileError, UnsafeFileError, load, save

REPO_ROOT = Path(__file__).resolve().parents[2]
FORMATS = [".safetensors", ".npz"]


def nested_checkpoint(rng):
    return {
        "epoch": 3,
        "lr": 0.1,
        "name": "cbam",
        "done": False,
        "best": None,
        "milestones": [30, 60],
        "betas": (0.9, 0.999),
        "model": {
            "layer1.0.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "bn1.running_var": rng.random(4),  # float64
            "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
            "labels": np.arange(5, dtype=np.int64),
            "mask": np.array([True, False]),
            "empty": np.zeros((0, 3), dtype=np.float32),
        },
        "optimizer": {"state": {0: {"momentum_buffer": rng.standard_normal(3)}}, "groups": []},
    }


def assert_tree_equal(got, expected, where="root"):
    assert type(got) is type(expected) or isinstance(expected, np.generic), where
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_tree_equal(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_tree_equal(g, e, f"{where}[{i}]")
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert got.dtype == expected.dtype and got.shape == np.shape(expected), where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    else:
        assert got == expected, where


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", FORMATS)
def test_nested_round_trip(tmp_path, suffix):
    ckpt = nested_checkpoint(np.random.default_rng(0))
    save(ckpt, tmp_path / f"ckpt{suffix}")
    assert_tree_equal(load(tmp_path / f"ckpt{suffix}"), ckpt)


@pytest.mark.parametrize("suffix", FORMATS)
def test_flat_state_dict_with_dotted_keys_stays_flat(tmp_path, suffix):
    sd = {"layer1.0.attn.channel.mlp.0.weight": np.ones((2, 32), np.float32), "fc.bias": np.ones(3)}
    save(sd, tmp_path / f"sd{suffix}")
    assert_tree_equal(load(tmp_path / f"sd{suffix}"), sd)


@pytest.mark.parametrize("suffix", FORMATS)
def test_tensor_like_leaves_and_numpy_scalars(tmp_path, suffix):
    class FakeTensor:  # anything with .numpy(), like minicbam.Tensor
        def numpy(self):
            return np.arange(4, dtype=np.float64).reshape(2, 2)

    save(
        {"t": FakeTensor(), "s": np.float32(2.5), "be": np.arange(3, dtype=">i4")},
        tmp_path / f"t{suffix}",
    )
    out = load(tmp_path / f"t{suffix}")
    np.testing.assert_array_equal(out["t"], [[0.0, 1.0], [2.0, 3.0]])
    assert out["s"].shape == () and out["s"].dtype == np.float32 and out["s"] == 2.5
    np.testing.assert_array_equal(out["be"], [0, 1, 2])


@pytest.mark.parametrize("suffix", FORMATS)
def test_big_endian_arrays_come_back_native_endian(tmp_path, suffix):
    save({"be": np.arange(3, dtype=">i4"), "le": np.ones(2, "<f8")}, tmp_path / f"b{suffix}")
    out = load(tmp_path / f"b{suffix}")
    assert out["be"].dtype == np.dtype("int32") and out["be"].dtype.isnative
    assert out["le"].dtype == np.dtype("float64") and out["le"].dtype.isnative
    np.testing.assert_array_equal(out["be"], [0, 1, 2])


@pytest.mark.parametrize("suffix", FORMATS)
def test_loaded_arrays_are_writable(tmp_path, suffix):
    save({"w": np.zeros(3)}, tmp_path / f"w{suffix}")
    w = load(tmp_path / f"w{suffix}")["w"]
    w += 1
    np.testing.assert_array_equal(w, [1.0, 1.0, 1.0])


def test_other_tools_read_our_files_as_flat_dicts(tmp_path):
    ckpt = {"model": {"fc.weight": np.ones((2, 3))}, "epoch": 1}
    save(ckpt, tmp_path / "c.safetensors")
    save(ckpt, tmp_path / "c.npz")
    assert list(safetensors.numpy.load_file(tmp_path / "c.safetensors")) == ["model.fc.weight"]
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__minicbam__", "model.fc.weight"]


def test_flat_files_from_other_tools(tmp_path):
    arrays = {"a.b": np.arange(6, dtype=np.int64).reshape(2, 3), "c": np.ones(2, np.float16)}
    safetensors.numpy.save_file(arrays, tmp_path / "x.safetensors", metadata={"format": "pt"})
    np.savez(tmp_path / "x.npz", **arrays)
    for name in ("x.safetensors", "x.npz"):
        assert_tree_equal(load(tmp_path / name), arrays)


def test_flat_safetensors_load_in_name_order(tmp_path):
    # safetensors.deserialize lists the tensors in no fixed order (it varies call to call)
    names = ["z", "a", "m", "b", "y"]
    dtypes = [np.float64, np.float16, np.float32, np.int8, np.int64]
    arrays = {n: np.ones(i + 1, d) for i, (n, d) in enumerate(zip(names, dtypes))}
    safetensors.numpy.save_file(arrays, tmp_path / "x.safetensors")
    for _ in range(5):
        assert list(load(tmp_path / "x.safetensors")) == sorted(names)


def test_safetensors_bfloat16_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = torch.tensor([1.5, -2.25, 3.0e38], dtype=torch.bfloat16)
    save_file({"w": t}, tmp_path / "bf.safetensors")
    out = load(tmp_path / "bf.safetensors")["w"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, t.float().numpy())


def test_save_rejections(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors, \.npz"):
        save({}, tmp_path / "x.pth")
    with pytest.raises(TypeError, match="expects a dict"):
        save([np.ones(1)], tmp_path / "x.npz")
    with pytest.raises(TypeError, match=r"'a\.b'.*object"):
        save({"a": {"b": object()}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dtype object"):
        save({"a": np.array([None])}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="complex"):
        save({"a": np.ones(2, np.complex64)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"flat name 'a\.b'"):
        save({"a.b": np.ones(1), "a": {"b": np.ones(1)}}, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


def test_load_rejections(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")
    (tmp_path / "x.txt").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"\.safetensors, \.npz, \.pth\.tar, \.pth, \.pt, \.bin"):
        load(tmp_path / "x.txt")


# --------------------------------------------------------------------------- atomicity


def _only_file_is(directory, name):
    assert [p.name for p in directory.iterdir()] == [name]


@pytest.mark.parametrize("suffix", FORMATS)
def test_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"ckpt{suffix}"
    save({"v": np.zeros(3)}, path)

    def broken_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(serialization.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        save({"v": np.ones(1000)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path)["v"], np.zeros(3))
    _only_file_is(tmp_path, path.name)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("suffix", FORMATS)
def test_save_keeps_an_existing_files_mode(tmp_path, suffix):
    path = tmp_path / f"ckpt{suffix}"
    save({"v": np.zeros(3)}, path)
    assert os.stat(path).st_mode & 0o777 == 0o644  # a new file: the usual mode, not 0600
    os.chmod(path, 0o600)
    save({"v": np.ones(3)}, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    _only_file_is(tmp_path, path.name)


def test_failure_mid_npz_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save({"a": np.zeros(3), "b": np.zeros(3)}, path)
    real_write_array = np.lib.format.write_array
    calls = []

    def write_then_fail(fp, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first member is already written
            raise RuntimeError("killed mid-write")
        real_write_array(fp, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save({"a": np.ones(3), "b": np.ones(3)}, path)
    monkeypatch.undo()
    assert_tree_equal(load(path), {"a": np.zeros(3), "b": np.zeros(3)})
    _only_file_is(tmp_path, path.name)


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save({"v": np.zeros(3)}, path)

    def broken_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(serialization.os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        save({"v": np.ones(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path)["v"], np.zeros(3))
    _only_file_is(tmp_path, path.name)


_SAVE_LOOP = """
import sys
import numpy as np
from minicbam.io.serialization import save

path = sys.argv[1]
base = np.arange(1_000_000, dtype=np.float64)
i = 0
while True:
    save({"i": i, "x": base + i}, path)
    if i == 0:
        print("saved", flush=True)
    i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("suffix", FORMATS)
def test_sigkill_during_save_loop_leaves_a_loadable_file(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for delay in (0.02, 0.11):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVE_LOOP, str(path)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout.readline() == b"saved\n"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        out = load(path)
        np.testing.assert_array_equal(out["x"], np.arange(1_000_000, dtype=np.float64) + out["i"])


# --------------------------------------------------------------- torch files, by hand


def _str(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(i):
    return b"J" + struct.pack("<i", i)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def tensor_ops(size, stride, offset=0, numel=6, storage="FloatStorage", key="0"):
    """Pickle opcodes of ``torch._utils._rebuild_tensor_v2`` as torch.save writes them."""
    storage_type = b"ctorch\n" + storage.encode() + b"\n"
    pid = _tuple([_str("storage"), storage_type, _str(key), _str("cpu"), _int(numel)]) + b"Q"
    sizes, strides = _tuple(map(_int, size)), _tuple(map(_int, stride))
    args = _tuple([pid, _int(offset), sizes, strides, b"\x89", b"ccollections\nOrderedDict\n)R"])
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def dict_pickle(items):
    """Protocol-2 pickle of a dict whose values are opcode snippets."""
    body = b"".join(_str(k) + v for k, v in items.items())
    return b"\x80\x02}(" + body + b"u."


def write_torch_zip(path, pkl, storages, byteorder=b"little"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)


def test_handmade_zip_with_strides_and_offsets(tmp_path):
    pkl = dict_pickle({"v": tensor_ops((2, 2), (1, 2), offset=1), "s": tensor_ops((), ())})
    write_torch_zip(tmp_path / "m.pth", pkl, {"0": np.arange(6, dtype="<f4").tobytes()})
    out = load(tmp_path / "m.pth")
    np.testing.assert_array_equal(out["v"], [[1.0, 3.0], [2.0, 4.0]])
    assert out["s"].shape == () and out["s"] == 0.0 and out["v"].dtype == np.float32


def test_handmade_big_endian_zip(tmp_path):
    pkl = dict_pickle({"v": tensor_ops((3,), (2,), storage="IntStorage")})
    write_torch_zip(tmp_path / "m.pt", pkl, {"0": np.arange(6, dtype=">i4").tobytes()}, b"big")
    out = load(tmp_path / "m.pt")["v"]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [0, 2, 4])


@pytest.mark.parametrize(
    "size, stride, offset, numel, data, match",
    [
        ((4,), (2,), 0, 6, 24, "reads element 6 of a storage of 6"),
        ((3,), (-1,), 2, 6, 24, "negative"),
        ((2,), (1,), 0, 6, 20, "holds 20 bytes, expected 6 x 4"),
        ((2,), (1,), 7, 6, 24, "reads element 8"),
    ],
)
def test_handmade_zip_bounds_are_checked(tmp_path, size, stride, offset, numel, data, match):
    pkl = dict_pickle({"v": tensor_ops(size, stride, offset, numel)})
    write_torch_zip(tmp_path / "m.pth", pkl, {"0": bytes(data)})
    with pytest.raises(CorruptFileError, match=match):
        load(tmp_path / "m.pth")


def test_handmade_zip_missing_storage(tmp_path):
    write_torch_zip(tmp_path / "m.pth", dict_pickle({"v": tensor_ops((2,), (1,))}), {})
    with pytest.raises(CorruptFileError, match=r"archive/data/0.*missing"):
        load(tmp_path / "m.pth")


# ------------------------------------------------------------------ hostile pickles


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_hostile_payload_is_real(tmp_path):
    # Guards the next tests: plain pickle does run the payload.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Hostile(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("layout", ["bare", "legacy", "zip"])
def test_hostile_pickle_raises_and_executes_nothing(tmp_path, layout):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"state_dict": _Hostile(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "bare":
        path.write_bytes(evil)
    elif layout == "legacy":
        header = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in header) + evil)
    else:
        write_torch_zip(path, evil, {})
    with pytest.raises(UnsafeFileError, match=r"(posix|nt|os)\.system"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        # BUILD {"dtype": "junk"} on the shared torch.FloatStorage stand-in
        b"ctorch\nFloatStorage\n}" + _str("dtype") + _str("junk") + b"sb.",
        # BUILD with slot state: setattr(_rebuild_tensor_v2, "__defaults__", (1, 2))
        b"ctorch._utils\n_rebuild_tensor_v2\nN}" + _str("__defaults__") + b"(K\x01K\x02ts\x86b.",
    ],
)
def test_pickle_cannot_alter_the_allowed_globals(tmp_path, payload):
    (tmp_path / "poison.pth").write_bytes(b"\x80\x02" + payload)
    with pytest.raises(CorruptFileError):
        load(tmp_path / "poison.pth")
    # later loads in the same process are unaffected
    pkl = dict_pickle({"v": tensor_ops((3,), (2,))})
    write_torch_zip(tmp_path / "ok.pth", pkl, {"0": np.arange(6, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(load(tmp_path / "ok.pth")["v"], [0.0, 2.0, 4.0])


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch", "device"),
    ],
)
def test_globals_outside_the_allow_list(tmp_path, module, name):
    path = tmp_path / "g.pth.tar"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(UnsafeFileError, match=rf"{module}\.{name}") as info:
        load(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


# ---------------------------------------------------------------- real torch.save


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_checkpoint(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "transposed": base.t(),
        "slice": base[1:3, 2:5],
        "step": base[::2, ::3],
        "expanded": torch.ones(3, 1).expand(3, 4),
        "half": torch.linspace(-2, 2, 5, dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.25, 1e30], dtype=torch.bfloat16),
        "double": torch.randn(2, 3, dtype=torch.float64),
        "long": torch.arange(-3, 3),
        "int": torch.arange(4, dtype=torch.int32),
        "byte": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(3, 2)),
    }
    import collections

    sd = collections.OrderedDict(state)
    # a real module's state_dict carries `_metadata` (a BUILD opcode in the pickle)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).state_dict()
    return {
        "epoch": 3,
        "arch": "resnet50",
        "state_dict": sd,
        "model": model,
        "best_prec1": 76.5,
        "hist": [(1, 2.0)],
    }


def expected_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    if isinstance(value, dict):
        return {k: expected_numpy(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".pth.tar", ".bin"])
def test_real_torch_files(tmp_path, torch, zip_format, suffix):
    ckpt = torch_checkpoint(torch)
    path = tmp_path / f"ckpt{suffix}"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    out = load(path)
    assert type(out["state_dict"]) is dict
    assert_tree_equal(out, expected_numpy(ckpt))


def test_real_torch_shared_storage(tmp_path, torch):
    w = torch.arange(12.0)
    torch.save({"a": w[:6].view(2, 3), "b": w[6:]}, tmp_path / "s.pth")
    out = load(tmp_path / "s.pth")
    np.testing.assert_array_equal(out["a"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out["b"], np.arange(6.0, 12.0))
    out["a"][0, 0] = 99.0  # copies, not views of one buffer
    assert out["b"][0] == 6.0


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_torch_files(tmp_path, torch, zip_format):
    path = tmp_path / "t.pth"
    torch.save(torch_checkpoint(torch), path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    for cut in (0, 1, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=str(path)):
            load(path)


# ----------------------------------------------------------- corrupt / mislabelled


def test_garbage_and_mislabelled_files(tmp_path):
    cases = {
        "garbage.safetensors": b"\x00" * 3,
        "huge_header.safetensors": struct.pack("<Q", 2**60) + b"{}",
        "garbage.npz": b"not a zip at all",
        "garbage.pth": b"hello world",
        "empty.pth": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptFileError, match=name):
            load(tmp_path / name)
    save({"x": np.ones(2)}, tmp_path / "real.safetensors")
    os.replace(tmp_path / "real.safetensors", tmp_path / "mislabelled.npz")
    with pytest.raises(CorruptFileError, match="not an npz.*looks like a safetensors file"):
        load(tmp_path / "mislabelled.npz")
    save({"x": np.ones(2)}, tmp_path / "real.npz")
    os.replace(tmp_path / "real.npz", tmp_path / "mislabelled.safetensors")
    with pytest.raises(CorruptFileError, match="not a safetensors file.*zip archive"):
        load(tmp_path / "mislabelled.safetensors")


def test_an_unreferenced_array_in_the_file_is_refused(tmp_path):
    path = tmp_path / "x.npz"
    save({"a": np.zeros(2)}, path)
    with zipfile.ZipFile(path, "a") as zf, zf.open("b.npy", "w") as member:
        np.lib.format.write_array(member, np.ones(3), allow_pickle=False)
    with pytest.raises(CorruptFileError, match=r"unreferenced: \['b'\]"):
        load(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_tree_referencing_a_missing_array(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    save({"a": np.ones(1), "b": np.ones(1)}, path)
    if suffix == ".npz":
        with np.load(path) as npz:
            members = {k: npz[k] for k in npz.files if k != "b"}
        np.savez(path, **members)
    else:
        arrays = safetensors.numpy.load_file(path)
        with open(path, "rb") as f:
            f.seek(8)
            metadata = __import__("json").loads(
                f.read(int.from_bytes(path.read_bytes()[:8], "little"))
            )
        safetensors.numpy.save_file({"a": arrays["a"]}, path, metadata=metadata["__metadata__"])
    with pytest.raises(CorruptFileError, match="array 'b'"):
        load(path)


# ------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    """name -> bytes of small valid files in every format this module reads."""
    tmp = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    files = {}
    for suffix in FORMATS:
        save(nested_checkpoint(rng), tmp / f"c{suffix}")
        files[f"c{suffix}"] = (tmp / f"c{suffix}").read_bytes()
    write_torch_zip(tmp / "h.pth", dict_pickle({"v": tensor_ops((2, 3), (3, 1))}), {"0": bytes(24)})
    files["h.pth"] = (tmp / "h.pth").read_bytes()
    try:
        import torch
    except ImportError:
        return files
    small = {"w": torch.arange(6.0).reshape(2, 3).t(), "n": torch.arange(3), "e": 1}
    for name, zip_format in (("z.pth", True), ("l.pth", False)):
        torch.save(small, tmp / name, _use_new_zipfile_serialization=zip_format)
        files[name] = (tmp / name).read_bytes()
    return files


@st.composite
def mutations(draw, files):
    name = draw(st.sampled_from(sorted(files)))
    data = bytearray(files[name])
    if draw(st.booleans()):
        return name, bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return name, bytes(data)


@settings(deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_fail_only_with_value_or_key_errors(tmp_path, valid_files, data):
    name, content = data.draw(mutations(valid_files))
    path = tmp_path / name
    path.write_bytes(content)
    try:
        result = load(path)
    except (ValueError, KeyError) as e:
        assert isinstance(e, (CorruptFileError, UnsafeFileError)) and str(path) in str(e)
    else:
        assert isinstance(result, dict)
