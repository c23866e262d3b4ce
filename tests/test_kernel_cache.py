"""minicbam.kernel_cache: a change to any kernel source gives a fresh numba cache folder, so
a cached kernel never runs the old version of a body defined in another file."""

import os
import shutil
import subprocess
import sys

import pytest

import minicbam
from minicbam import kernel_cache

RELU_BODY = "    return zero if x <= zero else x"


def _copy_package(tmp_path):
    target = tmp_path / "pkg" / "minicbam"
    shutil.copytree(
        os.path.dirname(minicbam.__file__), target, ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def test_stamp_follows_kernel_sources_only(tmp_path):
    copy = _copy_package(tmp_path)
    stamp = kernel_cache.source_stamp(str(copy))
    assert stamp == kernel_cache.source_stamp()  # same sources, same folder
    (copy / "app" / "cli.py").write_text("# not a kernel file\n")
    assert kernel_cache.source_stamp(str(copy)) == stamp
    for name in ("ops/unary.py", "kernels/elementwise.py", "device.py"):
        path = copy / name
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        assert kernel_cache.source_stamp(str(copy)) != stamp, name
        path.write_text(original)
    assert kernel_cache.source_stamp(str(copy)) == stamp
    # a kernel file renamed, contents unchanged: another module name, another stamp
    (copy / "ops" / "unary.py").rename(copy / "ops" / "unary_renamed.py")
    assert kernel_cache.source_stamp(str(copy)) != stamp


def test_numba_caches_into_the_stamped_folder():
    from numba.core import config

    folder = config.CACHE_DIR
    assert os.path.basename(folder) == f"kernels-{kernel_cache.source_stamp()}"
    assert os.path.dirname(folder) == kernel_cache.cache_root()


def test_root_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel_cache.cache_root() == str(tmp_path / "minicbam")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert kernel_cache.cache_root() == str(tmp_path / "mine")


def _relu_of_minus_one(package_root, cache):
    env = {**os.environ, "PYTHONPATH": str(package_root), "NUMBA_CACHE_DIR": str(cache)}
    code = (
        "import minicbam as mc; assert mc.__file__.startswith(%r); "
        "print(mc.tensor([-1.0, 3.0]).relu().numpy().tolist())" % str(package_root)
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=package_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_an_edited_body_in_another_file_is_recompiled(tmp_path):
    """The elementwise launcher (kernels/elementwise.py) is cached; relu's body lives in
    ops/unary.py. With numba's per-file keys the second run would print the old result."""
    copy = _copy_package(tmp_path)
    unary = copy / "ops" / "unary.py"
    source = unary.read_text()
    if RELU_BODY not in source:
        pytest.fail("relu's body changed: update RELU_BODY")
    cache = tmp_path / "cache"
    assert _relu_of_minus_one(copy.parent, cache) == "[0.0, 3.0]"
    unary.write_text(source.replace(RELU_BODY, "    return x + one"))
    assert _relu_of_minus_one(copy.parent, cache) == "[0.0, 4.0]"
    assert len(os.listdir(cache)) == 2  # one folder per version of the kernel sources
