"""Study mode: with NUMBA_DISABLE_JIT=1 every kernel runs as plain Python (so pdb can step
into it, docs/internals.md section 7) and a CBAM forward + backward gives the compiled result.

NUMBA_DISABLE_JIT is read when numba is imported, so each run is a fresh subprocess: one on
the CPU, one with the CUDA simulator and the tensors on "cuda". The reference is the same
computation in this (compiled) process.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import minicbam as mc
import minicbam.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys
import numpy as np
import numba
import minicbam as mc
import minicbam.nn as nn
sys.path.insert(0, {tests!r})
from test_study_mode import cbam_forward_backward
assert numba.config.DISABLE_JIT
np.savez({out!r}, **cbam_forward_backward({device!r}))
"""


def cbam_forward_backward(device):
    """Output, input gradient and parameter gradients of a small float64 CBAM (train mode)."""
    mc.manual_seed(0)
    cbam = nn.CBAM(8, reduction=4, kernel_size=3).double().to(device)
    rng = np.random.default_rng(1)
    x = mc.tensor(rng.standard_normal((2, 8, 5, 5)), device=device, requires_grad=True)
    v = mc.tensor(rng.standard_normal((2, 8, 5, 5)), device=device)
    y = cbam(x)
    (y * v).sum().backward()
    result = {"y": y.numpy(), "x.grad": x.grad.numpy()}
    result.update({name: p.grad.numpy() for name, p in cbam.named_parameters()})
    return result


@pytest.mark.parametrize("device, simulator", [("cpu", "0"), ("cuda", "1")])
def test_cbam_runs_uncompiled_and_matches_the_compiled_run(tmp_path, device, simulator):
    out = str(tmp_path / "result.npz")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_ENABLE_CUDASIM=simulator)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    script = SCRIPT.format(tests=os.path.join(ROOT, "tests"), out=out, device=device)
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    uncompiled = dict(np.load(out))
    compiled = cbam_forward_backward("cpu")
    assert sorted(uncompiled) == sorted(compiled) and len(compiled) > 5
    for name, expected in compiled.items():
        np.testing.assert_allclose(uncompiled[name], expected, rtol=1e-9, atol=1e-12, err_msg=name)
