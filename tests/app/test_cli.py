"""The ``minicbam`` command line: help, clear errors, gradcheck and bench subcommands.

Most tests call ``minicbam.app.cli.main`` in-process (importing numba once is the slow part);
a few run the real script to check exit codes and that no traceback reaches the user.
"""

import os
import shutil
import subprocess
import sys

import pytest

from minicbam.app.cli import main

COMMANDS = ("train", "eval", "gradcheck", "attention-map", "bench")


def run_script(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "minicbam", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: minicbam {command}" in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


def test_python_m_minicbam_and_console_script():
    result = run_script("--help")
    assert result.returncode == 0 and "attention-map" in result.stdout
    script = os.path.join(os.path.dirname(sys.executable), "minicbam")
    if os.path.exists(script):
        result = subprocess.run(
            [script, "train", "--help"], check=False, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and "--resume" in result.stdout


def test_no_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "vgg16"], "invalid choice: 'vgg16'"),
        (["train", "--attention", "bam"], "choose from"),
        (["train", "--dataset", "imagenet"], "digits"),
        (["train", "--epochs", "0"], "expected a positive integer, got '0'"),
        (["train", "--epochs", "ten"], "expected a positive integer"),
        (["train", "--lr", "-1"], "expected a positive number"),
        (["gradcheck", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_model_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "vgg16"])
    err = capsys.readouterr().err
    assert all(name in err for name in ("digits-cnn", "resnet18", "resnet34", "resnet50"))


def test_missing_data_dir_names_the_expected_files(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "train-images-idx3-ubyte" in err
    # An existing folder without the files: the loader's own message, still one line.
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1.bin" in err and "Traceback" not in err


def test_warmup_longer_than_training_is_rejected(capsys):
    assert main(["train", "--epochs", "2", "--warmup-epochs", "2"]) == 2
    assert "--warmup-epochs" in capsys.readouterr().err


def test_missing_and_bad_checkpoints(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["attention-map", "--checkpoint", str(junk)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    result = run_script("train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be present")
def test_device_cuda_without_a_gpu_is_a_clear_error():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "minicbam", "train", "--device", "cuda", "--epochs", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2
    assert "no usable GPU (numba.cuda finds no CUDA driver" in result.stderr
    assert "use --device cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_gradcheck_subset_passes(capsys):
    import minicbam as mc
    from minicbam.tensor import generator

    mc.manual_seed(123)
    before = generator().bit_generator.state
    assert main(["gradcheck", "--only", "relu", "gate", "SpatialAttention"]) == 0
    assert generator().bit_generator.state == before  # the cases' reseeding is undone
    out = capsys.readouterr().out
    assert "max |err|" in out and "FAIL" not in out and "ERROR" not in out
    assert "7 of 7 checks passed" in out  # relu 1, gate 2, SpatialAttention 4


def test_gradcheck_unknown_name_lists_the_valid_ones(capsys):
    assert main(["gradcheck", "--only", "convolution"]) == 2
    err = capsys.readouterr().err
    assert "convolution" in err and "conv2d" in err and "CBAM" in err


def test_gradcheck_list(capsys):
    assert main(["gradcheck", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert {"conv2d", "cross_entropy", "CBAM", "SqueezeExcitation"} <= set(names)


def test_bench_builtin(capsys):
    assert main(["bench", "--builtin", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "CBAM(64) fwd+bwd" in out and " ms" in out


def test_compile_notice_only_while_the_kernel_cache_is_empty(tmp_path, monkeypatch):
    import importlib

    from minicbam.app.cli import compile_notice

    cache = importlib.import_module("minicbam.ops.gate")._scale_cpu._cache
    monkeypatch.setattr(cache, "_cache_path", str(tmp_path))
    notice = compile_notice()
    assert notice.startswith("first run: compiling kernels") and str(tmp_path) in notice
    (tmp_path / "gate._scale_cpu-79.py311.nbi").write_bytes(b"")
    assert compile_notice() is None


def test_the_command_line_does_not_import_matplotlib_until_it_draws():
    """matplotlib costs ~0.5 s to import: `minicbam train` imports it once, at its end."""
    code = (
        "import sys, minicbam.app.cli, minicbam.app.train, minicbam.app.checkpoint; "
        "print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
