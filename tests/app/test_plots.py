"""Plots: training curves, spatial-attention maps, Grad-CAM, and the attention-map command."""

import numpy as np
import pytest

import minicbam as mc
from minicbam.app.cli import main
from minicbam.app.config import TrainConfig
from minicbam.models import DigitsCNN, resnet18
from minicbam.app.train import fit
from minicbam.app.plots import attention_maps, grad_cam, plot_attention, plot_curves, upsample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("viz_run")
    fit(
        TrainConfig(epochs=1, limit_train=64, limit_test=32, batch_size=32, out=str(out)),
        log=lambda line: None,
    )
    return out / "checkpoint.safetensors"


def test_plot_curves(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "test_loss": 1.2 / e,
            "train_acc": 1 - 0.3 / e,
            "test_acc": 1 - 0.4 / e,
        }
        for e in (1, 2, 3)
    ]
    plot_curves(history, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_upsample_is_bilinear_with_half_pixel_centres():
    np.testing.assert_allclose(upsample(np.array([[0.0, 1.0]]), (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
    np.testing.assert_allclose(upsample(np.full((3, 3), 0.7), (8, 5)), np.full((8, 5), 0.7))
    assert upsample(np.ones((1, 1)), (6, 6)).shape == (6, 6)


def test_digits_maps_and_grad_cam():
    mc.manual_seed(0)
    model = DigitsCNN(attention="cbam")
    x = mc.rand(2, 1, 8, 8)
    cam, scores = grad_cam(model, x)
    assert cam.shape == (2, 4, 4) and scores.shape == (2, 10)
    assert cam.min() >= 0 and cam.max() <= 1
    maps = attention_maps(model)  # one map per CBAM, not also its SpatialAttention part
    assert [(name, m.shape) for name, m in maps] == [
        ("block1.attn", (2, 8, 8)),
        ("block2.attn", (2, 4, 4)),
    ]


def test_grad_cam_matches_its_definition():
    """alpha = spatial mean of d score / d features; cam = relu(sum_k alpha_k A_k), scaled."""
    mc.manual_seed(1)
    model = DigitsCNN(attention="se").eval()
    x = mc.rand(1, 1, 8, 8)
    cam, _ = grad_cam(model, x, target=3)
    features = model.block2(model.pool(model.block1(x))).detach().requires_grad_()
    model.fc(model.avgpool(features).flatten(1))[0, 3].backward()
    alpha = features.grad.numpy().mean(axis=(2, 3), keepdims=True)
    expected = np.maximum((alpha * features.numpy()).sum(1), 0)
    if expected.max() > 0:
        expected /= expected.max()
    np.testing.assert_allclose(cam, expected, atol=1e-6)


def test_resnet_cbam_attention_png(tmp_path):
    mc.manual_seed(0)
    model = resnet18(num_classes=10, attention="cbam", stem="cifar", in_channels=3, width=8)
    image = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    result = plot_attention(model, image, tmp_path / "resnet.png", label=2)
    assert_png(tmp_path / "resnet.png")
    assert len(result["maps"]) == 8  # one CBAM per BasicBlock
    assert result["maps"][0] == ("layer1.0.attn", (16, 16))
    assert result["maps"][-1] == ("layer4.1.attn", (2, 2))


def test_model_without_spatial_attention_still_plots(tmp_path):
    model = DigitsCNN(attention=None)
    result = plot_attention(model, np.zeros((1, 8, 8), np.float32), tmp_path / "plain.png")
    assert result["maps"] == []
    assert_png(tmp_path / "plain.png")


def test_attention_map_command(checkpoint, tmp_path, capsys):
    out = tmp_path / "map.png"
    assert (
        main(["attention-map", "--checkpoint", str(checkpoint), "--index", "5", "--out", str(out)])
        == 0
    )
    assert_png(out)
    printed = capsys.readouterr().out
    assert "block1.attn 8x8" in printed and "block2.attn 4x4" in printed


def test_attention_map_default_path_and_bad_index(checkpoint, capsys):
    assert main(["attention-map", "--checkpoint", str(checkpoint)]) == 0
    assert_png(checkpoint.parent / "attention-0.png")
    assert main(["attention-map", "--checkpoint", str(checkpoint), "--index", "100000"]) == 2
    assert "out of range" in capsys.readouterr().err
