"""A checkpoint writer killed with SIGKILL mid-write never leaves a torn checkpoint.

A child process saves a ~64 MB checkpoint to one path over and over, alternating between
contents A and B, with ``minicbam.io.serialization.save``. Once it has completed at least one
save, the parent SIGKILLs it at a random moment (a random fraction of, or a few, save
durations later: usually in the middle of writing the temporary file, sometimes in the gap
between two saves, where ``save`` fsyncs the directory). The first kill of each format also
waits until the directory shows a new temporary file, so that at least one kill lands
mid-write however the machine's load stretches those phases. The parent then checks:

* the file at the path loads and equals A or B exactly (every array, the scalars, the tree);
* at most one new temporary file is left per kill, named ``.<name>.<random>.tmp`` beside
  the target. ``save`` writes to such a file (``tempfile.mkstemp``), fsyncs it and
  ``os.replace``s it over the target; a SIGKILL gives no chance to clean up, so the file
  being written stays behind. Nothing removes it later (a later ``save`` makes its own
  temporary file and cannot tell a stale one from another writer's live one). It is
  harmless: ``load`` reads only the path it is given, and ``load`` of the temporary file
  itself is refused by suffix. Its bytes are a prefix of A or B (a torn file, which
  ``load`` rejects as ``CorruptFileError`` under a proper suffix) or, killed between the
  fsync and the rename, all of A or B.

This tests process death, not power loss (the page cache survives a SIGKILL; the fsyncs in
``save`` are what keep a power cut from tearing the file). Runtime: about 2 s per kill.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minicbam.io.serialization import CorruptFileError, load

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 4_000_000  # float32 elements per array: 4 arrays of 16 MB, 64 MB per checkpoint
KILLS = 3  # per format

# Shared by the child (exec'd from this text) and the parent.
CONTENTS = """
import numpy as np


def contents(tag, n):
    sign = 1.0 if tag == "A" else -1.0
    base = np.arange(n, dtype=np.float32)
    return {
        "tag": tag,
        "epoch": 1 if tag == "A" else 2,
        "model": {f"layer{k}.weight": sign * (base + k) for k in range(4)},
        "optimizer": {"lr": 0.1, "betas": (0.9, 0.999)},
    }
"""

CHILD = (
    CONTENTS
    + """
import sys
import time

from minicbam.io.serialization import save

path, n = sys.argv[1], int(sys.argv[2])
checkpoints = [contents("A", n), contents("B", n)]
i = 0
while True:
    start = time.perf_counter()
    save(checkpoints[i % 2], path)
    print(f"saved {i} {time.perf_counter() - start:.6f}", flush=True)
    i += 1
"""
)

namespace = {}
exec(CONTENTS, namespace)  # noqa: S102 - our own text, shared with the child
contents = namespace["contents"]


def assert_equal_checkpoints(got, expected, where):
    assert set(got) == set(expected), where
    assert got["tag"] == expected["tag"] and got["epoch"] == expected["epoch"], where
    assert got["optimizer"] == expected["optimizer"], where
    assert set(got["model"]) == set(expected["model"]), where
    for key, array in expected["model"].items():
        assert got["model"][key].dtype == array.dtype, (where, key)
        assert np.array_equal(got["model"][key], array), f"{where}: {key} differs (torn write?)"


def temp_files(directory, name):
    pattern = re.compile(rf"^\.{re.escape(name)}\..+\.tmp$")
    others = [p.name for p in directory.iterdir() if p.name != name]
    assert all(pattern.match(o) for o in others), f"unexpected files {others}"
    return set(others)


def wait_for_new_temp_file(proc, path, known):
    """Poll until a temporary file not in ``known`` is beside ``path`` (a save is writing)."""
    deadline = time.monotonic() + 60  # a bound against a hung child, not a measurement
    while not temp_files(path.parent, path.name) - known:
        assert proc.poll() is None, "the writer died before its next save"
        assert time.monotonic() < deadline, "no save started within 60 s"
        time.sleep(0.0002)


def run_and_kill(path, delay_fraction, extra_saves, wait_for_write=False, known=()):
    """Start the writer, wait for its first completed save, kill it (with ``wait_for_write``,
    only once a temporary file not in ``known`` exists). Returns the number of saves the
    child reported completed before the kill."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(N)], stdout=subprocess.PIPE, env=env
    )
    try:
        first = proc.stdout.readline().decode()
        assert first.startswith("saved 0 "), f"child failed before its first save: {first!r}"
        duration = float(first.split()[2])
        time.sleep((extra_saves + delay_fraction) * duration)
        if wait_for_write:
            wait_for_new_temp_file(proc, path, set(known))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    completed = 1 + sum(1 for line in proc.stdout.read().decode().splitlines() if "saved" in line)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return completed


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_sigkill_mid_save_leaves_a_or_b(tmp_path, suffix):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    expected = {"A": contents("A", N), "B": contents("B", N)}
    name = f"ckpt{suffix}"
    path = tmp_path / name
    left_over = set()
    for kill in range(KILLS):
        where = f"kill {kill} (KILL_SEED={seed})"
        delay, extra = rng.uniform(0.05, 0.95), rng.choice([0, 0, 1, 2])
        completed = run_and_kill(path, delay, extra, wait_for_write=kill == 0, known=left_over)

        # 1. the checkpoint is whole: exactly A or exactly B
        got = load(path)
        assert got["tag"] in expected, where
        assert_equal_checkpoints(got, expected[got["tag"]], where)

        # 2. at most one new temporary file, clearly named
        now = temp_files(tmp_path, name)
        new = now - left_over
        assert left_over <= now and len(new) <= 1, f"{where}: new temp files {sorted(new)}"
        for tmp_name in new:
            check_leftover(tmp_path / tmp_name, suffix, expected, where)
        left_over = now
        assert completed >= 1

    # The first kill waited for a temporary file: at least one kill landed mid-write.
    assert left_over, f"no kill landed mid-write (KILL_SEED={seed}); the test proved nothing"


def check_leftover(tmp, suffix, expected, where):
    """A killed save's temporary file: ignored by name, torn or whole by content."""
    with pytest.raises(ValueError, match="supported suffixes"):
        load(tmp)  # ".tmp" is no checkpoint suffix: never mistaken for one
    probe = tmp.with_name("probe" + suffix)
    os.link(tmp, probe)  # same bytes under a loadable name
    try:
        got = load(probe)
    except CorruptFileError:
        pass  # killed mid-write: a prefix of A or B
    else:  # killed after the write (e.g. during fsync), before the rename
        assert_equal_checkpoints(got, expected[got["tag"]], where + " (temp file)")
    finally:
        probe.unlink()
