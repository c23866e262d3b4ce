"""Training runs through ``minicbam train``: outputs, resume reproducibility, eval.

Runs are tiny (a fixed 96-sample subset of the 8x8 digits, batches of 32, 2 epochs) so the
module takes seconds; they check plumbing and exact reproducibility, not accuracy.
"""

import csv
import math
import os

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn, optim
from minicbam.app.checkpoint import METRIC_FIELDS
from minicbam.app.cli import main
from minicbam.app.config import TrainConfig, UserError
from minicbam.app.factories import make_model, make_scheduler
from minicbam.app.train import fit

TINY = ["--limit-train", "96", "--limit-test", "48", "--batch-size", "32", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Two uninterrupted epochs."""
    out = tmp_path_factory.mktemp("full")
    assert main(["train", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """The same run, stopped after epoch 1 and resumed from its checkpoint."""
    out = tmp_path_factory.mktemp("resumed")
    assert main(["train", "--epochs", "2", "--stop-after", "1", "--out", str(out), *TINY]) == 0
    assert len(read_metrics(out / "metrics.csv")) == 1
    assert main(["train", "--resume", str(out / "checkpoint.safetensors"), "--no-progress"]) == 0
    return out


def test_train_writes_metrics_curves_and_checkpoints(full_run):
    for name in ("metrics.csv", "curves.png", "checkpoint.safetensors", "best.safetensors"):
        assert (full_run / name).stat().st_size > 0, name
    assert (full_run / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    rows = read_metrics(full_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert tuple(rows[0]) == METRIC_FIELDS
    for row in rows:
        assert 0.0 <= float(row["test_acc"]) <= 1.0 and float(row["train_loss"]) > 0
    # cosine over 2 epochs: the full lr, then half of it
    assert [float(r["lr"]) for r in rows] == pytest.approx([3e-3, 1.5e-3])


def test_checkpoint_contents(full_run):
    tree = mc.load(full_run / "checkpoint.safetensors")
    assert tree["epoch"] == 2 and len(tree["history"]) == 2
    assert {"model", "optimizer", "scheduler", "rng", "config", "data"} <= set(tree)
    assert tree["config"]["model"] == "digits-cnn" and tree["config"]["attention"] == "cbam"
    assert any(key.endswith("attn.spatial.conv.weight") for key in tree["model"])


def test_resume_reproduces_an_uninterrupted_run(full_run, resumed_run):
    a = mc.load(full_run / "checkpoint.safetensors")
    b = mc.load(resumed_run / "checkpoint.safetensors")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key], b["model"][key], err_msg=key)
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for index in state_a:
        for name in state_a[index]:
            np.testing.assert_array_equal(state_a[index][name], state_b[index][name])
    rows_a = read_metrics(full_run / "metrics.csv")
    rows_b = read_metrics(resumed_run / "metrics.csv")
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        row_a.pop("seconds"), row_b.pop("seconds")
        assert row_a == row_b


def test_resume_of_a_finished_run_is_refused(full_run, capsys):
    assert main(["train", "--resume", str(full_run / "checkpoint.safetensors")]) == 2
    assert "already holds 2 epochs" in capsys.readouterr().err


def test_a_second_train_into_a_run_is_refused_until_asked(full_run, capsys):
    before = {name: (full_run / name).read_bytes() for name in ("best.safetensors", "metrics.csv")}
    assert main(["train", "--epochs", "2", "--out", str(full_run), *TINY]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert all((full_run / name).read_bytes() == data for name, data in before.items())


def test_a_last_batch_of_one_is_dropped_for_batchnorm(tmp_path, capsys):
    """65 samples in batches of 64 leave one: BatchNorm cannot train on it (PyTorch raises
    "Expected more than 1 value per channel"), so it is dropped, with a note."""
    args = ["train", "--epochs", "1", "--limit-train", "65", "--limit-test", "16"]
    assert main([*args, "--batch-size", "64", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "last training batch would hold 1 sample" in capsys.readouterr().err
    first = (tmp_path / "a" / "checkpoint.safetensors").stat().st_mtime_ns
    again = [*args, "--batch-size", "32", "--out", str(tmp_path / "a"), "--no-progress"]
    assert main([*again, "--overwrite"]) == 0  # asked: the run is replaced
    assert (tmp_path / "a" / "checkpoint.safetensors").stat().st_mtime_ns != first
    assert main([*args, "--batch-size", "1", "--out", str(tmp_path / "b")]) == 2
    assert "at least 2 samples per training batch" in capsys.readouterr().err
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(2).train()(mc.zeros(1, 2, 1, 1))  # what the dropped batch would hit
    try:
        import torch
    except ImportError:
        return
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm2d(2).train()(torch.zeros(1, 2, 1, 1))


def test_eval_prints_accuracy_and_confusion_matrix(full_run, capsys):
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(full_run / "best.safetensors"),
                "--limit",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "40 samples" in out and "accuracy" in out and "confusion matrix" in out
    matrix = [line.split()[1:] for line in out.splitlines()[-10:]]
    assert sum(int(v) for row in matrix for v in row) == 40


def test_eval_on_a_dataset_with_other_channels_is_refused(full_run, tmp_path, capsys):
    # A CIFAR-10 test batch in the binary format: per image a label byte + 3 x 32 x 32 pixels.
    rng = np.random.default_rng(0)
    records = [np.concatenate([[k], rng.integers(0, 256, 3072)]) for k in range(10)]
    (tmp_path / "test_batch.bin").write_bytes(np.concatenate(records).astype(np.uint8).tobytes())
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(full_run / "best.safetensors"),
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "takes 1-channel images; cifar10 has 3" in err and "Traceback" not in err


def test_config_validation_names_the_setting():
    with pytest.raises(UserError, match="unknown model 'lenet'; choose one of: digits-cnn"):
        TrainConfig(model="lenet").validate()
    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        TrainConfig(batch_size=0).validate()
    for lr in (float("nan"), float("inf"), 0.0, -1e-3):
        with pytest.raises(UserError, match="--lr must be a positive number"):
            TrainConfig(lr=lr).validate()


def test_default_output_folder_names_model_attention_dataset():
    config = TrainConfig(model="resnet18", attention="se", dataset="cifar10")
    assert config.out_dir() == os.path.join("runs", "resnet18-se-cifar10")
    assert TrainConfig(out="elsewhere").out_dir() == "elsewhere"


def scheduled_lrs(**settings):
    config = TrainConfig(lr=1.0, **settings)
    opt = optim.SGD([mc.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, opt)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
    return lrs


def test_schedules_with_and_without_warmup():
    assert scheduled_lrs(epochs=3, scheduler="none") == [1.0, 1.0, 1.0]
    assert scheduled_lrs(epochs=6, scheduler="step", step_size=2) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert scheduled_lrs(epochs=4, scheduler="cosine", warmup_epochs=2) == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.5]
    )
    assert scheduled_lrs(epochs=4, scheduler="none", warmup_epochs=1) == pytest.approx(
        [0.5, 1.0, 1.0, 1.0]
    )


def test_fit_in_process_with_sgd_step_and_se(tmp_path):
    config = TrainConfig(
        attention="se",
        optimizer="sgd",
        scheduler="step",
        epochs=1,
        batch_size=16,
        limit_train=32,
        limit_test=16,
        out=str(tmp_path),
    )
    lines = []
    result = fit(config, log=lines.append)
    assert len(result["history"]) == 1 and "digits-cnn (attention se)" in lines[0]
    assert (tmp_path / "checkpoint.safetensors").exists()


def test_an_interrupted_run_still_draws_the_curves_of_its_finished_epochs(tmp_path):
    """curves.png is drawn once, when the run ends: also when it ends by Ctrl-C."""
    config = TrainConfig(epochs=3, batch_size=16, limit_train=32, limit_test=16, out=str(tmp_path))

    def log(line):
        if line.startswith("epoch   2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, log=log)
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "metrics.csv")] == [1, 2]


def test_a_run_that_fails_before_its_first_epoch_draws_no_curves(tmp_path, monkeypatch):
    import minicbam.app.train as train

    def broken_loader(*args, **kwargs):
        raise RuntimeError("broken loader")

    monkeypatch.setattr(train, "run_epoch", broken_loader)
    config = TrainConfig(epochs=1, batch_size=16, limit_train=32, limit_test=16, out=str(tmp_path))
    with pytest.raises(RuntimeError, match="broken loader"):
        fit(config, log=lambda line: None)
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_take_the_datasets_channels(name):
    # Forward only: a full-width ResNet's backward takes tens of seconds on 2 cores.
    model = make_model(name, "cbam", num_classes=10, in_channels=1).eval()
    with mc.no_grad():
        assert model(mc.rand(2, 1, 8, 8)).shape == (2, 10)
    assert model.layer1[0].attn is not None


def test_resume_can_extend_a_run_and_keeps_its_settings(full_run, tmp_path, capsys):
    checkpoint = str(full_run / "checkpoint.safetensors")
    args = ["train", "--resume", checkpoint, "--epochs", "3", "--lr", "1", "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "resuming keeps the checkpoint's --lr 0.003" in captured.err
    assert "epoch   3/3" in captured.out
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # the history travels with the run
    # The schedule is rebuilt for the new horizon: epoch 3 runs at the cosine-over-3 lr of
    # epoch index 2 (the old horizon of 2 would give it lr 0, a wasted epoch).
    expected = 3e-3 * (1 + math.cos(math.pi * 2 / 3)) / 2
    assert float(rows[2]["lr"]) == pytest.approx(expected, rel=1e-6)
    for row, old in zip(rows[:2], read_metrics(full_run / "metrics.csv")):
        assert row["lr"] == old["lr"]  # the epochs already trained keep their lrs


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    from minicbam.app.checkpoint import rng_state, set_rng_state
    from minicbam.io.serialization import load, save
    from minicbam.tensor import generator

    mc.manual_seed(3)
    generator().integers(0, 2**32, dtype=np.uint32)  # leaves half a 64-bit word buffered
    save({"rng": rng_state()}, str(tmp_path / "r.safetensors"))
    expected = generator().integers(0, 2**32, 5, dtype=np.uint32), generator().random(3)
    mc.manual_seed(99)
    set_rng_state(load(str(tmp_path / "r.safetensors"))["rng"])
    got = generator().integers(0, 2**32, 5, dtype=np.uint32), generator().random(3)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_best_epoch_is_the_first_with_the_highest_accuracy():
    import types

    from minicbam.app.train import record_epoch

    run = types.SimpleNamespace(epoch=0, history=[], best_acc=-1.0)
    flags = [record_epoch(run, (1.0, 0.5), (1.0, acc), 0.1, 0.0)[1] for acc in (0.5, 0.7, 0.7, 0.6)]
    assert flags == [True, True, False, False]  # a tie keeps the earlier best.safetensors
    assert run.best_acc == 0.7 and [row["epoch"] for row in run.history] == [1, 2, 3, 4]
