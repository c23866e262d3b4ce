"""minicbam.app.first_run: a first run's kernels compiled on two processes before epoch 1.

The end-to-end test runs ``minicbam train`` on an empty kernel cache in a child process
(its own NUMBA_CACHE_DIR): the helper and this process compile disjoint halves, training
then compiles nothing, and a second run without the dry run trains to the same numbers.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np

import minicbam as mc
from minicbam.app import first_run
from minicbam.app.config import TrainConfig
from minicbam.app.train import fit
from minicbam.data import DataLoader, TensorDataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# In the child: count minicbam compile events during compile_ahead and after it.
CHILD = r"""
import json, sys
from numba.core import event
from minicbam import precompile
from minicbam.app import cli

events = []

class Compiles(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        events.append(precompile.index_key(ev.data["dispatcher"]))

event.register("numba:compile", Compiles())
ahead = {}
original = cli.compile_ahead

def recording(config):
    ahead.update(original(config))
    ahead["compiled_here"] = sorted(set(events))
    events.clear()

cli.compile_ahead = recording
code = cli.main(["train", "--epochs", "1", "--out", sys.argv[1], "--no-progress", "--overwrite"])
ahead["during_training"] = sorted({e for e in events if e.startswith("minicbam.")})
print(json.dumps(ahead))
sys.exit(code)
"""


def _child_env(cache, parallel):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, NUMBA_CACHE_DIR=str(cache))
    env["MINICBAM_PARALLEL_COMPILE"] = "1" if parallel else "0"  # "1": even on one core
    return env


def _metrics(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1 :] for row in rows]


def test_a_first_run_compiles_on_two_processes_and_trains_as_without(tmp_path):
    cache = tmp_path / "cache"
    out_ahead, out_plain = tmp_path / "ahead", tmp_path / "plain"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(out_ahead)],
        check=False,
        env=_child_env(cache, parallel=True),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "first run: compiling kernels on 2 processes before epoch 1" in child.stdout
    ahead = json.loads(child.stdout.strip().splitlines()[-1])
    assert ahead["helper_returncode"] == 0
    here = set(ahead["here"])
    assert 0 < len(here) < ahead["functions"]  # both processes took a share
    assert ahead["functions"] > 30  # the digits CBAM CNN: ~40 kernels
    assert here <= set(ahead["compiled_here"])  # (plus the callees compiled inside them)
    assert ahead["during_training"] == []  # everything came from the cache

    # Same cache, warm: no notice, no dry run; the same training, number for number.
    plain = subprocess.run(
        [sys.executable, "-m", "minicbam", "train", "--epochs", "1", "--no-progress"]
        + ["--out", str(out_plain)],
        check=False,
        env=_child_env(cache, parallel=True),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "first run" not in plain.stdout
    assert _metrics(out_ahead) == _metrics(out_plain)


def _history(config, out):
    rows = fit(dataclasses.replace(config, out=str(out)), log=lambda line: None)["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_a_dry_run_leaves_the_run_that_follows_unchanged(tmp_path):
    config = TrainConfig(epochs=1, limit_train=96, limit_test=48, batch_size=32)
    plain = _history(config, tmp_path / "a")
    first_run.dry_run(config)
    assert _history(config, tmp_path / "b") == plain


def _loader(n, batch_size, drop_last=False):
    x = mc.tensor(np.arange(n, dtype=np.float32).reshape(n, 1))
    y = mc.tensor(np.arange(n))
    return DataLoader(TensorDataset(x, y), batch_size, shuffle=True, seed=3, drop_last=drop_last)


def test_first_and_last_batches_are_those_of_epoch_0():
    for n, batch_size, drop_last in [(10, 4, False), (10, 4, True), (3, 8, False), (8, 4, False)]:
        expected = list(_loader(n, batch_size, drop_last))
        got = first_run._first_and_last_batches(_loader(n, batch_size, drop_last))
        wanted = [expected[0], expected[-1]] if len(expected) > 1 else expected
        assert len(got) == len(wanted)
        for (gx, gy), (wx, wy) in zip(got, wanted):
            np.testing.assert_array_equal(gx.numpy(), wx.numpy())
            np.testing.assert_array_equal(gy.numpy(), wy.numpy())


def test_parallel_compile_is_for_cpu_runs_on_two_cores_unless_told(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("MINICBAM_PARALLEL_COMPILE", raising=False)
    assert first_run.parallel_compile_enabled(TrainConfig())
    assert not first_run.parallel_compile_enabled(TrainConfig(device="cuda"))
    monkeypatch.setenv("MINICBAM_PARALLEL_COMPILE", "0")
    assert not first_run.parallel_compile_enabled(TrainConfig())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not first_run.parallel_compile_enabled(TrainConfig())
    monkeypatch.setenv("MINICBAM_PARALLEL_COMPILE", "1")  # told: even on one core
    assert first_run.parallel_compile_enabled(TrainConfig())
    monkeypatch.delenv("MINICBAM_PARALLEL_COMPILE")
    assert not first_run.parallel_compile_enabled(TrainConfig())
