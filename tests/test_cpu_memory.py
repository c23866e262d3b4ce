"""minicbam/cpu_memory.py: freed arrays' pages stay in the process and are reused.

Counted with getrusage's minor page faults (a first touch of a fresh page), not timed."""

import os
import subprocess
import sys

import pytest

from minicbam import cpu_memory

SCRIPT = """
import resource, sys
import numpy as np
import minicbam
from minicbam import cpu_memory
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
SIZES = [(k % 7 + 1) << 19 for k in range(24)]  # 0.5-3.5 MiB: a step's saved activations
def step():
    kept = [np.ones(size // 4, np.float32) for size in SIZES]  # ~48 MiB live at once
    del kept  # freed together, as at the end of a backward pass
step()
step()
before = faults()
for _ in range(10):
    step()
print(cpu_memory.configured, faults() - before)
"""

glibc_only = pytest.mark.skipif(cpu_memory._glibc() is None, reason="malloc settings are glibc's")


def _run(env_value):
    env = dict(os.environ)
    env.pop("MINICBAM_CPU_MALLOC", None)
    if env_value is not None:
        env["MINICBAM_CPU_MALLOC"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    configured, faults = out.stdout.split()
    return configured == "True", int(faults)


@glibc_only
def test_freed_pages_are_reused():
    configured, faults = _run(None)
    assert configured
    # 10 steps of 24 arrays, ~12,000 pages per step, served from kept pages
    assert faults < 500, faults


@glibc_only
def test_system_malloc_is_left_alone_on_request():
    configured, faults = _run("system")
    assert not configured
    # glibc's own policy trims the freed heap top each step: its pages fault again
    assert faults > 10 * 12_000 // 2, faults


def test_configure_declines_without_glibc(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    monkeypatch.delenv("MINICBAM_CPU_MALLOC", raising=False)
    assert cpu_memory.configure() is False
