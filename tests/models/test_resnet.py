"""ResNets: published parameter counts, torchvision key names, attention placement, stems,
initialisation, and float64 gradient checks of CBAM blocks and a tiny CBAM-ResNet."""

import re

import helpers
import numpy as np
import pytest

import minicbam as mc
from minicbam import nn
from minicbam.models import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from minicbam.nn.attention import CBAM, SpatialAttention, SqueezeExcitation

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def rand_input(shape, seed=0, requires_grad=False):
    data = np.random.default_rng(seed).standard_normal(shape)
    return mc.tensor(data, dtype=mc.float64, requires_grad=requires_grad)


def randomize_(module, seed=0):
    helpers.randomize_(module, seed, scale=0.5)
    return module


# ----------------------------------------------------------------------------- counts
# torchvision's published counts; ResNet-50 + CBAM and SE-ResNet-50 as in the CBAM paper's
# Table 4 (28.09M) and SE's (28.09M): per block 2 C^2 / 16 + C / 16 + C (MLP), + 2*49 + 2
# (spatial conv and BN) for CBAM.
@pytest.mark.parametrize(
    "build, kwargs, count",
    [
        (resnet18, {}, 11_689_512),
        (resnet34, {}, 21_797_672),
        (resnet50, {}, 25_557_032),
        (resnet101, {}, 44_549_160),
        (resnet50, {"attention": "cbam", "attention_variant": "official"}, 28_089_624),
        (resnet50, {"attention": "cbam"}, 28_089_624),
        (resnet50, {"attention": "se"}, 28_088_024),
        (resnet50, {"attention": "cam"}, 28_088_024),
        (resnet50, {"attention": "sam"}, 25_557_032 + 16 * 100),
    ],
)
def test_parameter_counts(build, kwargs, count):
    assert build(**kwargs).num_parameters() == count


def test_timm_and_paper_variants_have_no_mlp_bias():
    # minus the MLP biases, C / 16 + C per block; the paper variant also has no spatial BN.
    blocks = [(256, 3), (512, 4), (1024, 6), (2048, 3)]
    biases = sum(n * (c // 16 + c) for c, n in blocks)
    assert resnet50(attention="cbam", attention_variant="timm").num_parameters() == (
        28_089_624 - biases
    )
    assert resnet50(attention="cbam", attention_variant="paper").num_parameters() == (
        28_089_624 - biases - 16 * 2
    )


# ----------------------------------------------------------------------------- layout
def tiny(attention="cbam", block=BasicBlock, stem="cifar", **kwargs):
    return ResNet(block, [1, 1, 1, 1], 5, attention, stem, width=4, reduction=2, **kwargs)


def test_torchvision_key_names_and_attention_keys():
    sd = resnet18(attention="cbam").state_dict()
    keys = list(sd)
    assert keys[:6] == ["conv1.weight"] + [f"bn1.{n}" for n in BN]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert "layer2.0.downsample.0.weight" in sd and "layer2.0.downsample.1.running_var" in sd
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["fc.weight"].shape == (1000, 512)
    attn = {k for k in keys if ".attn." in k}
    assert len({re.match(r"layer\d\.\d\.attn", k).group(0) for k in attn}) == 8
    assert sd["layer3.1.attn.channel.mlp.0.weight"].shape == (16, 256)
    assert sd["layer4.0.attn.spatial.conv.weight"].shape == (1, 2, 7, 7)
    plain = set(resnet18().state_dict())
    assert plain == set(keys) - attn  # attention=None adds nothing


def test_bottleneck_keys_and_attention_width():
    sd = resnet50(attention="se").state_dict()
    assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert sd["layer1.0.attn.fc1.weight"].shape == (16, 256)
    assert sd["layer4.2.attn.fc2.weight"].shape == (2048, 128)
    assert sd["fc.weight"].shape == (1000, 2048)


@pytest.mark.parametrize(
    "attention, kind",
    [
        ("se", SqueezeExcitation),
        ("cam", CBAM),
        ("sam", SpatialAttention),
        ("cbam", CBAM),
    ],
)
def test_attention_kinds(attention, kind):
    model = tiny(attention)
    modules = model.attention_modules()
    assert [name for name, _ in modules] == [f"layer{i}.0.attn" for i in range(1, 5)]
    assert all(isinstance(m, kind) for _, m in modules)
    assert model(mc.randn(2, 3, 8, 8)).shape == (2, 5)


def test_stems():
    cifar = resnet18(num_classes=10, stem="cifar", width=8)
    assert cifar.conv1.weight.shape == (8, 3, 3, 3) and cifar.maxpool is None
    assert cifar(mc.randn(2, 3, 8, 8)).shape == (2, 10)
    imagenet = resnet18(num_classes=7, width=8)
    assert imagenet.conv1.stride == (2, 2) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    feats = imagenet.eval().forward_features(mc.randn(1, 3, 64, 64))
    assert feats.shape == (1, 64, 2, 2)  # 64 / 32
    with pytest.raises(ValueError, match="stem must be one of"):
        resnet18(stem="tiny")
    with pytest.raises(ValueError, match="attention must be one of"):
        resnet18(attention="bam")


def test_torchvision_initialisation():
    mc.manual_seed(0)
    model = resnet50(attention="cbam", attention_variant="official", width=16)
    w = model.layer2[0].conv2.weight.numpy()
    fan_out = w.shape[0] * 9
    assert abs(w.std() - np.sqrt(2 / fan_out)) < 0.1 * np.sqrt(2 / fan_out)
    bn = model.layer3[1].bn2
    assert (bn.weight.numpy() == 1).all() and (bn.bias.numpy() == 0).all()
    # The attention keeps its preset's init: the official spatial BN weight is 0.
    assert (model.layer1[0].attn.spatial.bn.weight.numpy() == 0).all()
    zero = resnet18(zero_init_residual=True, width=8)
    assert not zero.layer1[0].bn2.weight.numpy().any()
    assert zero.layer1[0].bn1.weight.numpy().all()


def test_zero_init_residual_zeroes_each_blocks_last_bn():
    model = resnet50(zero_init_residual=True, width=2)
    for name, blk in model.named_modules():
        if isinstance(blk, Bottleneck):
            assert not blk.bn3.weight.numpy().any(), name
            assert blk.bn2.weight.numpy().all() and blk.bn1.weight.numpy().all(), name


# ----------------------------------------------------------------------------- placement
class Zero(nn.Module):
    def forward(self, x):
        return x * 0.0


class Record(nn.Module):
    def forward(self, x):
        self.seen = x
        return x


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("stride", [1, 2])
def test_attention_acts_on_the_residual_branch_before_the_addition(block, stride):
    planes, inplanes = 4, 4 * block.expansion
    downsample = None
    if stride != 1:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    blk = randomize_(block(inplanes, planes, stride, downsample, CBAM(planes * block.expansion, 2)))
    blk.double().eval()
    x = rand_input((2, inplanes, 6, 6))
    # Zeroing the branch after attention leaves relu(shortcut).
    blk.attn = Zero()
    shortcut = x if downsample is None else downsample(x)
    np.testing.assert_allclose(blk(x).numpy(), np.maximum(shortcut.numpy(), 0))
    # The attention's input is the last BN's output (no ReLU in between, not after the sum).
    blk.attn = Record()
    y = blk(x)
    last_bn = blk.bn2 if block is BasicBlock else blk.bn3
    assert (blk.attn.seen.numpy() < 0).any()
    np.testing.assert_allclose(y.numpy(), np.maximum(blk.attn.seen.numpy() + shortcut.numpy(), 0))
    assert blk.attn.seen.shape == (2, planes * block.expansion, 6 // stride, 6 // stride)
    assert last_bn.num_features == blk.attn.seen.shape[1]


def test_attention_maps_reachable_in_a_model():
    model = tiny("cbam")
    model(mc.randn(2, 3, 8, 8))
    maps = {name: m.last_spatial_map.shape for name, m in model.attention_modules()}
    assert maps == {
        "layer1.0.attn": (2, 1, 8, 8),
        "layer2.0.attn": (2, 1, 4, 4),
        "layer3.0.attn": (2, 1, 2, 2),
        "layer4.0.attn": (2, 1, 1, 1),
    }


# ----------------------------------------------------------------------------- gradients
def gradcheck_module(module, x, train):
    module.double().train(train)
    params = list(module.parameters())
    assert mc.gradcheck(lambda x, *_: module(x), (x, *params), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "block, train", [(BasicBlock, True), (BasicBlock, False), (Bottleneck, True)]
)
def test_gradcheck_cbam_block(block, train):
    inplanes = 3
    out = 2 * block.expansion
    downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, 2, bias=False), nn.BatchNorm2d(out))
    blk = randomize_(block(inplanes, 2, 2, downsample, CBAM(out, 2, 3)))
    gradcheck_module(blk, rand_input((2, inplanes, 4, 4), requires_grad=True), train)


@pytest.mark.parametrize("train", [True])  # eval: tests/io/interop/test_torch_parity.py
def test_gradcheck_tiny_cbam_resnet_input(train):
    # layer4's maps are 1x1: train-mode BN then needs N = 2 (N * H * W > 1).
    model = randomize_(
        ResNet(BasicBlock, [1, 1, 1, 1], 3, "cbam", "cifar", width=2, reduction=1, kernel_size=3)
    )
    model.double().train(train)
    x = rand_input((2, 3, 4, 4), requires_grad=True)
    assert mc.gradcheck(model, x, atol=1e-6, rtol=1e-4)
