"""A catalogue of bad files and command-line mistakes: each ends in ONE line and exit status 2.

Sibling of tests/test_error_catalogue.py (bad arguments to ops and layers). Every row
builds its files under ``tmp_path`` and returns the ``minicbam`` arguments; ``main`` must
return 2 and print exactly one ``minicbam CMD: error: ...`` line matching the row's regex,
never a traceback. Every row fails before any training step, so the whole file is quick.
Rows: --out that is a file / inside a file / not creatable, a second train into an existing
run, damaged MNIST and CIFAR files, damaged or mismatched checkpoints for --resume, eval and
attention-map, and attention-map outputs that cannot be written. Damaged model files
(``mc.load``) have their own fuzz in tests/io/test_loader_fuzz.py.
"""

import dataclasses
import gzip
import os
import re
import struct

import numpy as np
import pytest

from minicbam.app.checkpoint import rng_state
from minicbam.app.cli import main
from minicbam.app.config import TrainConfig
from minicbam.app.factories import make_model, make_optimizer, make_scheduler
from minicbam.io.serialization import save

CASES = []


def case(id, pattern, command="train"):
    def register(build):
        CASES.append(pytest.param(build, command, pattern, id=id))
        return build

    return register


# ------------------------------------------------------------------------- files to damage
def idx_bytes(array, claimed=None):
    """An IDX file of a uint8 array; ``claimed`` overrides the header's first dimension."""
    dims = list(array.shape)
    if claimed is not None:
        dims[0] = claimed
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in dims)
    return header + array.astype(np.uint8).tobytes()


def mnist_dir(tmp_path, n_train=6, n_test=4, **replace):
    """A tiny MNIST folder; ``replace`` maps a file name to the bytes it should hold."""
    root = tmp_path / "mnist"
    root.mkdir(exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx_bytes(np.zeros((n_train, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(np.zeros((n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(n_test) % 10),
    }
    files.update(replace)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return ["--dataset", "mnist", "--data-dir", str(root)]


def checkpoint(path, config=None, **damage):
    """A real (untrained) training checkpoint, then ``damage`` replaces top-level entries."""
    config = config or TrainConfig(epochs=3)
    model = make_model(config.model, config.attention, 10, 1)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer)
    tree = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "epoch": 1,
        "rng": rng_state(),
        "config": dataclasses.asdict(config),
        "data": {"in_channels": 1, "size": 8, "num_classes": 10, "classes": list("0123456789")},
        "history": [],
        "best_acc": 0.5,
    }
    for key, value in damage.items():
        if callable(value):
            value(tree)
        else:
            tree[key] = value
    save(tree, path)
    return str(path)


def set_config(**values):
    return lambda tree: tree["config"].update(values)


# ---------------------------------------------------------------------------- --out
@case("out-is-a-file", r"--out .*cannot write there")
def _(tmp_path):
    (tmp_path / "taken").write_text("x")
    return ["--out", str(tmp_path / "taken")]


@case("out-inside-a-file", r"--out .*cannot write there")
def _(tmp_path):
    (tmp_path / "taken").write_text("x")
    return ["--out", str(tmp_path / "taken" / "run")]


@case("out-not-creatable", r"--out /proc/.*cannot write there")
def _(tmp_path):
    return ["--out", "/proc/minicbam-run"]  # nobody, not even root, can create this


@case("second-train-into-a-run", r"already holds a run .*--resume .*--out DIR.*--overwrite")
def _(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch\n")
    return ["--out", str(tmp_path / "run")]


@case("resume-into-another-run", r"already holds a run")
def _(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "best.safetensors").write_bytes(b"")
    return ["--resume", checkpoint(tmp_path / "c.safetensors"), "--out", str(tmp_path / "other")]


# ----------------------------------------------------------------------- damaged data
@case("mnist-truncated", r"mnist files .* are damaged: .*truncated")
def _(tmp_path):
    full = idx_bytes(np.zeros((6, 28, 28)))
    return mnist_dir(tmp_path, **{"train-images-idx3-ubyte": full[:-100]})


@case("mnist-header-claims-more-items", r"damaged: .*truncated: shape \(60000, 28, 28\)")
def _(tmp_path):
    return mnist_dir(
        tmp_path, **{"train-images-idx3-ubyte": idx_bytes(np.zeros((6, 28, 28)), 60000)}
    )


@case("mnist-labels-out-of-range", r"damaged: .*labels must be in \[0, 10\)")
def _(tmp_path):
    return mnist_dir(tmp_path, **{"t10k-labels-idx1-ubyte": idx_bytes(np.array([0, 1, 12, 3]))})


@case("mnist-count-mismatch", r"damaged: .*holds 6 images but .* holds 5 labels")
def _(tmp_path):
    return mnist_dir(tmp_path, **{"train-labels-idx1-ubyte": idx_bytes(np.arange(5))})


@case("mnist-bad-magic", r"damaged: .*bad IDX magic")
def _(tmp_path):
    return mnist_dir(tmp_path, **{"t10k-images-idx3-ubyte": b"\x01\x02\x03\x04" + bytes(20)})


@case("mnist-corrupt-gzip", r"damaged: .*corrupt or truncated gzip")
def _(tmp_path):
    args = mnist_dir(tmp_path)
    root = tmp_path / "mnist"
    os.remove(root / "train-images-idx3-ubyte")
    data = gzip.compress(idx_bytes(np.zeros((6, 28, 28))))
    (root / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    return args


@case("cifar-wrong-size", r"cifar10 files .* damaged: .*not a positive multiple")
def _(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        (root / name).write_bytes(bytes(3073 * 2 - 1))
    return ["--dataset", "cifar10", "--data-dir", str(root)]


@case("data-dir-is-a-file", r"data directory .* is not a folder")
def _(tmp_path):
    (tmp_path / "data").write_text("x")
    return ["--dataset", "mnist", "--data-dir", str(tmp_path / "data")]


@case("one-training-sample-with-batchnorm", r"BatchNorm, which needs at least 2 samples")
def _(tmp_path):
    return ["--limit-train", "1", "--out", str(tmp_path / "run")]


# ---------------------------------------------------------------- damaged checkpoints
@case("resume-a-directory", r"checkpoint .* not found")
def _(tmp_path):
    return ["--resume", str(tmp_path)]


@case("resume-dev-zero", r"checkpoint .* not found")
def _(tmp_path):
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    return ["--resume", str(tmp_path / "zero.safetensors")]


@case("resume-unknown-suffix", r"cannot read checkpoint .*supported suffixes")
def _(tmp_path):
    (tmp_path / "run.ckpt").write_bytes(b"x")
    return ["--resume", str(tmp_path / "run.ckpt")]


@case("resume-truncated-checkpoint", r"cannot read checkpoint .*")
def _(tmp_path):
    path = checkpoint(tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[: len(data) // 2])
    return ["--resume", path]


@case("resume-a-file-that-is-no-checkpoint", r"is not a minicbam training checkpoint")
def _(tmp_path):
    save({"weights": np.zeros(2)}, tmp_path / "w.safetensors")
    return ["--resume", str(tmp_path / "w.safetensors")]


@case("resume-config-not-a-dict", r"damaged checkpoint: 'config' is not a dict")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", c=lambda t: t.update(config=[1]))]


@case("resume-config-wrong-type", r"damaged checkpoint: config 'lr' is 'fast'")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", lr=set_config(lr="fast"))]


@case("resume-config-bad-value", r"damaged checkpoint config: unknown model 'vgg'")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", m=set_config(model="vgg"))]


@case("resume-config-negative-epochs", r"damaged checkpoint config: --epochs must be at least 1")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", e=set_config(epochs=-2))]


@case("resume-epoch-not-a-number", r"damaged checkpoint: 'epoch' is 'one'")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", epoch="one")]


@case("resume-epoch-negative", r"damaged checkpoint: 'epoch' is -1")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", epoch=-1)]


@case("resume-config-bool-for-an-int", r"damaged checkpoint: config 'epochs' is True")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", e=set_config(epochs=True))]


@case("resume-history-not-rows", r"damaged checkpoint: 'history'")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", history=[1, 2])]


@case("resume-optimizer-mismatch", r"cannot resume from this checkpoint: .*parameter groups")
def _(tmp_path):
    broken = {"state": {}, "param_groups": []}
    return ["--resume", checkpoint(tmp_path / "c.safetensors", optimizer=broken)]


@case("resume-rng-damaged", r"cannot resume from this checkpoint")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", rng={"bit_generator": "nope"})]


@case("resume-weights-mismatch", r"cannot resume from this checkpoint: .*size mismatch")
def _(tmp_path):
    return ["--resume", checkpoint(tmp_path / "c.safetensors", model=lambda t: t["model"].update(
        {k: np.zeros(3, np.float32) for k in list(t["model"])[:1]}))]  # fmt: skip


@case("eval-config-damaged", r"damaged checkpoint: config 'attention' is 3", command="eval")
def _(tmp_path):
    path = checkpoint(tmp_path / "c.safetensors", a=set_config(attention=3))
    return ["--checkpoint", path]


@case(
    "eval-weights-mismatch",
    r"the weights do not fit .*size mismatch for .*size mismatch for ",
    command="eval",
)
def _(tmp_path):
    path = checkpoint(tmp_path / "c.safetensors", model=lambda t: t["model"].update(
        {k: np.zeros(3, np.float32) for k in list(t["model"])[:2]}))  # fmt: skip
    return ["--checkpoint", path]


@case("eval-data-shape-damaged", r"damaged checkpoint: 'data'", command="eval")
def _(tmp_path):
    return ["--checkpoint", checkpoint(tmp_path / "c.safetensors", data={"in_channels": -1})]


@case("eval-checkpoint-is-a-directory", r"not found", command="eval")
def _(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    return ["--checkpoint", str(tmp_path / "d.safetensors")]


@case("eval-damaged-mnist", r"mnist files .* are damaged", command="eval")
def _(tmp_path):
    args = mnist_dir(tmp_path, **{"t10k-labels-idx1-ubyte": idx_bytes(np.array([0, 99, 1, 2]))})
    return ["--checkpoint", checkpoint(tmp_path / "c.safetensors"), *args]


@case("attention-map-out-is-a-directory", r"Is a directory", command="attention-map")
def _(tmp_path):
    (tmp_path / "map.png").mkdir()
    path = checkpoint(tmp_path / "c.safetensors")
    return ["--checkpoint", path, "--out", str(tmp_path / "map.png")]


@case("attention-map-out-inside-a-file", r"File exists|Not a directory", command="attention-map")
def _(tmp_path):
    path = checkpoint(tmp_path / "c.safetensors")
    (tmp_path / "taken").write_text("x")
    return ["--checkpoint", path, "--out", str(tmp_path / "taken" / "map.png")]


@pytest.mark.parametrize("build, command, pattern", CASES)
def test_each_mistake_is_one_line_and_exit_2(tmp_path, capsys, build, command, pattern):
    argv = [command, *build(tmp_path), "--no-progress"] if command != "attention-map" else [
        command, *build(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"minicbam {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(pattern, errors[0]), errors[0]
    assert not any(line.startswith("  ") for line in lines), captured.err  # no stack frames


def test_an_existing_run_is_left_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"the first run's best")
    assert main(["train", "--out", str(run), "--no-progress"]) == 2
    assert (run / "best.safetensors").read_bytes() == b"the first run's best"
    assert sorted(os.listdir(run)) == ["best.safetensors"]
