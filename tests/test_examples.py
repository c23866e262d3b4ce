"""The scripts in examples/ run to completion (with small settings) and say what they claim."""

import importlib.util
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_custom_op_gradcheck_catches_the_wrong_backward():
    out = run_example("custom_op_gradcheck.py")
    assert "gradcheck(softplus): True" in out
    assert "gradcheck(wrong_softplus): False" in out
    assert "numeric" in out and "analytic" in out and "raised GradcheckError" in out


def test_cbam_digits_from_scratch():
    out = run_example("cbam_digits.py", "--epochs", "1", "--limit", "128")
    diff = float(out.split("max |difference| = ")[1].split()[0])
    assert diff < 1e-5
    assert "epoch 1:" in out and "test accuracy" in out


def test_load_pytorch_weights_without_torch(tmp_path):
    out = run_example("load_pytorch_weights.py", "--no-torch", "--dir", str(tmp_path))
    assert "NumPy writes the files" in out
    assert "max |output difference| 0.0e+00" in out
    assert (tmp_path / "cbam_official.safetensors").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_load_pytorch_weights_written_by_torch(tmp_path):
    out = run_example("load_pytorch_weights.py", "--dir", str(tmp_path))
    diff = float(out.split("minicbam vs PyTorch output: max |difference| = ")[1].split()[0])
    assert diff < 1e-5
    assert (tmp_path / "cbam_official.pth").exists()
    assert (tmp_path / "resnet18_cbam.pth.tar").exists()
