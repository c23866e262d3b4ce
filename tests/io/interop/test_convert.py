"""Key/layout converters: official CBAM and timm state dicts <-> minicbam's layout.

The parity tests build the reference modules in PyTorch (tests/torch_reference.py), convert
their state dicts, load them into a PyTorch copy of minicbam's layout and compare outputs;
the layout tests run without torch on hand-made dicts.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicbam.interop import from_official, from_timm, to_official, to_timm

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_cbam_dict(rng, channels=32, hidden=2, k=7, spatial=True):
    sd = {
        "ChannelGate.mlp.1.weight": rng.standard_normal((hidden, channels)),
        "ChannelGate.mlp.1.bias": rng.standard_normal(hidden),
        "ChannelGate.mlp.3.weight": rng.standard_normal((channels, hidden)),
        "ChannelGate.mlp.3.bias": rng.standard_normal(channels),
    }
    if spatial:
        sd["SpatialGate.spatial.conv.weight"] = rng.standard_normal((1, 2, k, k))
        sd.update({f"SpatialGate.spatial.bn.{n}": rng.standard_normal(1) for n in BN})
    return sd


def timm_cbam_dict(rng, channels=32, hidden=2, k=7, bias=False):
    sd = {
        "channel.fc1.weight": rng.standard_normal((hidden, channels, 1, 1)),
        "channel.fc2.weight": rng.standard_normal((channels, hidden, 1, 1)),
        "spatial.conv.conv.weight": rng.standard_normal((1, 2, k, k)),
        **{f"spatial.conv.bn.{n}": rng.standard_normal(1) for n in BN},
    }
    if bias:
        sd["channel.fc1.bias"] = rng.standard_normal(hidden)
        sd["channel.fc2.bias"] = rng.standard_normal(channels)
    return sd


def resnet_backbone_dict(rng):
    """A few torchvision-named ResNet keys (stem, one block with downsample, classifier)."""
    keys = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight"]
    keys += ["layer2.0.downsample.0.weight", "fc.weight", "fc.bias"]
    for bn in ("bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.downsample.1"):
        keys += [f"{bn}.{n}" for n in BN]
    return {k: rng.standard_normal(3) for k in keys}


def assert_same_dict(got, expected):
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ------------------------------------------------------------------------------- official


def test_official_module_keys_and_channel_swap():
    sd = official_cbam_dict(np.random.default_rng(0))
    out = from_official(sd)
    expected_keys = {"channel.mlp.0.weight", "channel.mlp.0.bias", "channel.mlp.2.weight"}
    expected_keys |= {"channel.mlp.2.bias", "spatial.conv.weight"}
    expected_keys |= {f"spatial.bn.{n}" for n in BN}
    assert set(out) == expected_keys
    np.testing.assert_array_equal(out["channel.mlp.0.weight"], sd["ChannelGate.mlp.1.weight"])
    np.testing.assert_array_equal(out["channel.mlp.2.bias"], sd["ChannelGate.mlp.3.bias"])
    # official input channels are (max, mean); minicbam's are (mean, max)
    conv = sd["SpatialGate.spatial.conv.weight"]
    np.testing.assert_array_equal(out["spatial.conv.weight"][:, 0], conv[:, 1])
    np.testing.assert_array_equal(out["spatial.conv.weight"][:, 1], conv[:, 0])


def test_official_whole_resnet_checkpoint_with_dataparallel_prefix():
    rng = np.random.default_rng(1)
    backbone = resnet_backbone_dict(rng)
    block = official_cbam_dict(rng, channels=16, hidden=1)
    sd = {f"module.{k}": v for k, v in backbone.items()}
    sd.update({f"module.layer1.0.cbam.{k}": v for k, v in block.items()})
    out = from_official({"epoch": 90, "arch": "resnet50", "state_dict": sd})
    expected = dict(backbone)
    expected.update({f"layer1.0.attn.{k}": v for k, v in from_official(block).items()})
    assert_same_dict(out, expected)


def test_official_no_spatial_and_missing_num_batches_tracked():
    sd = official_cbam_dict(np.random.default_rng(2), spatial=False)
    assert set(from_official(sd)) == {f"channel.mlp.{i}.{n}" for i in (0, 2) for n in BN[:2]}
    # checkpoints from PyTorch < 0.4.1 lack the counter: it stays absent
    sd = official_cbam_dict(np.random.default_rng(2))
    del sd["SpatialGate.spatial.bn.num_batches_tracked"]
    out = from_official(sd)
    assert "spatial.bn.num_batches_tracked" not in out
    assert "spatial.bn.running_var" in out


def test_official_unknown_keys_are_listed():
    sd = official_cbam_dict(np.random.default_rng(3))
    sd["bam1.conv.weight"] = np.zeros(1)
    sd["layer1.0.cbam.SpatialGate.spatial.conv.bias"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"bam1\.conv\.weight.*SpatialGate\.spatial\.conv\.bias"):
        from_official(sd)


def test_official_bad_spatial_conv_shape_names_the_key():
    sd = official_cbam_dict(np.random.default_rng(4))
    sd["SpatialGate.spatial.conv.weight"] = np.zeros((1, 3, 7, 7))
    with pytest.raises(ValueError, match=r"SpatialGate\.spatial\.conv\.weight.*\(1, 3, 7, 7\)"):
        from_official(sd)


# ----------------------------------------------------------------------------------- timm


def test_timm_module_keys_squeezed_and_unswapped():
    sd = timm_cbam_dict(np.random.default_rng(5), bias=True)
    out = from_timm(sd)
    np.testing.assert_array_equal(out["channel.mlp.0.weight"], sd["channel.fc1.weight"][:, :, 0, 0])
    np.testing.assert_array_equal(out["channel.mlp.2.weight"], sd["channel.fc2.weight"][:, :, 0, 0])
    np.testing.assert_array_equal(out["channel.mlp.0.bias"], sd["channel.fc1.bias"])
    # timm pools mean then max, as minicbam does: no swap
    np.testing.assert_array_equal(out["spatial.conv.weight"], sd["spatial.conv.conv.weight"])
    np.testing.assert_array_equal(
        out["spatial.bn.running_mean"], sd["spatial.conv.bn.running_mean"]
    )
    assert out["channel.mlp.0.weight"].shape == (2, 32)


def test_timm_bias_free_default_has_no_bias_keys():
    out = from_timm(timm_cbam_dict(np.random.default_rng(6), bias=False))
    assert not any(k.endswith(("mlp.0.bias", "mlp.2.bias")) for k in out)


def test_timm_resnet_se_and_cbam_blocks():
    rng = np.random.default_rng(7)
    backbone = resnet_backbone_dict(rng)
    se = {
        "fc1.weight": rng.standard_normal((8, 64, 1, 1)),
        "fc1.bias": rng.standard_normal(8),
        "fc2.weight": rng.standard_normal((64, 8, 1, 1)),
        "fc2.bias": rng.standard_normal(64),
    }
    sd = {f"module.{k}": v for k, v in backbone.items()}
    sd.update({f"module.layer1.0.se.{k}": v for k, v in se.items()})
    sd.update({f"layer2.0.se.{k}": v for k, v in timm_cbam_dict(rng).items()})
    out = from_timm(sd)
    assert out["layer1.0.attn.fc1.weight"].shape == (8, 64)
    np.testing.assert_array_equal(out["layer1.0.attn.fc2.bias"], se["fc2.bias"])
    assert out["layer2.0.attn.channel.mlp.0.weight"].shape == (2, 32)
    for key, value in backbone.items():
        np.testing.assert_array_equal(out[key], value)
    assert not any(".se." in k for k in out)


def test_timm_unknown_keys_and_bad_shapes():
    sd = timm_cbam_dict(np.random.default_rng(8))
    sd["layer1.0.se.bn.weight"] = np.ones(2)  # SEModule(use_norm=True): no minicbam counterpart
    sd["head.weight"] = np.ones(2)
    with pytest.raises(KeyError, match=r"layer1\.0\.se\.bn\.weight.*head\.weight"):
        from_timm(sd)
    sd = timm_cbam_dict(np.random.default_rng(8))
    sd["channel.fc1.weight"] = np.ones((2, 32, 3, 3))
    with pytest.raises(ValueError, match=r"channel\.fc1\.weight.*\(2, 32, 3, 3\)"):
        from_timm(sd)


# ---------------------------------------------------------------------- round trips


@st.composite
def layouts(draw):
    channels = draw(st.integers(1, 48))
    hidden = draw(st.integers(1, 8))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    prefix = draw(st.sampled_from(["", "layer1.0.", "layer4.2."]))
    seed = draw(st.integers(0, 2**32 - 1))
    return channels, hidden, k, prefix, np.random.default_rng(seed)


def _prefixed(sd, prefix, attr):
    return {(f"{prefix}{attr}.{k}" if prefix else k): v for k, v in sd.items()}


@settings(deadline=None)
@given(layouts(), st.booleans())
def test_official_round_trip(layout, spatial):
    channels, hidden, k, prefix, rng = layout
    sd = _prefixed(official_cbam_dict(rng, channels, hidden, k, spatial), prefix, "cbam")
    sd.update(resnet_backbone_dict(rng) if prefix else {})
    ours = from_official(sd)
    assert all(".cbam." not in key for key in ours)
    assert_same_dict(to_official(ours), sd)


@settings(deadline=None)
@given(layouts(), st.booleans())
def test_timm_round_trip(layout, bias):
    channels, hidden, k, prefix, rng = layout
    sd = _prefixed(timm_cbam_dict(rng, channels, hidden, k, bias), prefix, "se")
    sd.update(resnet_backbone_dict(rng) if prefix else {})
    ours = from_timm(sd)
    assert all(".se." not in key for key in ours)
    assert_same_dict(to_timm(ours), sd)


def test_official_to_timm_through_minicbam_swaps_once():
    sd = official_cbam_dict(np.random.default_rng(9))
    timm_sd = to_timm(from_official(sd))
    conv = sd["SpatialGate.spatial.conv.weight"]
    np.testing.assert_array_equal(timm_sd["spatial.conv.conv.weight"], conv[:, ::-1])
    assert timm_sd["channel.fc1.weight"].shape == (2, 32, 1, 1)


# ---------------------------------------------------------------- parity against PyTorch


@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


def _outputs_match(source, target, shape=(2, 32, 9, 11)):
    import torch

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(
            target.double()(x).numpy(), source.double()(x).numpy(), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("no_spatial", [False, True])
def test_official_parity(ref, no_spatial):
    official = ref.randomize(ref.OfficialCBAM(32, 16, no_spatial=no_spatial), seed=1)
    ours = ref.TorchCBAM(32, 16, spatial=not no_spatial).eval()
    ref.load_numpy_state_dict(ours, from_official(ref.numpy_state_dict(official)))
    _outputs_match(official, ours)


def test_official_parity_fails_without_the_swap(ref):
    # Guards the test itself: an unswapped conv weight must give different outputs.
    import torch

    official = ref.randomize(ref.OfficialCBAM(32, 16), seed=2)
    ours = ref.TorchCBAM(32, 16).eval()
    sd = from_official(ref.numpy_state_dict(official))
    sd["spatial.conv.weight"] = sd["spatial.conv.weight"][:, ::-1].copy()
    ref.load_numpy_state_dict(ours, sd)
    x = torch.randn(2, 32, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not np.allclose(ours(x).numpy(), official(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("mlp_bias", [False, True])
def test_timm_cbam_parity(ref, mlp_bias):
    timm = ref.randomize(ref.TimmCbam(32, mlp_bias=mlp_bias), seed=3)
    ours = ref.TorchCBAM(32, 16, bias=mlp_bias).eval()
    ref.load_numpy_state_dict(ours, from_timm(ref.numpy_state_dict(timm)))
    _outputs_match(timm, ours)


def test_timm_se_parity(ref):
    timm = ref.randomize(ref.TimmSE(128), seed=4)  # hidden = 8 in both layouts
    ours = ref.TorchSE(128).eval()
    ref.load_numpy_state_dict(ours, from_timm(ref.numpy_state_dict(timm)))
    _outputs_match(timm, ours, shape=(2, 128, 5, 4))


def test_reference_hidden_sizes(ref):
    # timm rounds C * rd_ratio (SE: to a multiple of 8); the official code floors C // r.
    assert ref.TimmCbam(24).channel.fc1.out_channels == 2
    assert ref.TimmCbam(8).channel.fc1.out_channels == 1
    assert ref.TimmSE(64).fc1.out_channels == 8
    assert ref.OfficialCBAM(24).ChannelGate.mlp[1].out_features == 1
