"""Attention modules: gradients, a NumPy oracle, state-dict layout, presets, maps, errors.

Gradient checks run in float64 on hypothesis-drawn channels, reductions, kernel sizes and
spatial sizes, with respect to the input and every parameter, in train and eval mode. The
spatial BatchNorm needs N * H * W > 1 to have a batch variance in train mode.
"""

import re

import numpy as np
import pytest
from helpers import randomize_
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam import nn
from minicbam.nn.attention import (
    CBAM,
    ChannelAttention,
    SpatialAttention,
    SqueezeExcitation,
    make_attention,
    timm_hidden,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
POOLS = st.sampled_from([("avg", "max"), ("max", "avg"), ("avg",), ("max",)])

channels_st = st.integers(1, 8)
reduction_st = st.integers(1, 4)
kernel_st = st.sampled_from([3, 7])
side_st = st.integers(1, 6)
batch_st = st.integers(1, 3)


def rand_input(shape, seed=0, requires_grad=True):
    data = np.random.default_rng(seed).standard_normal(shape)
    return mc.tensor(data, dtype=mc.float64, requires_grad=requires_grad)


def check_module_grads(module, x, train):
    """gradcheck of ``module`` w.r.t. its input and every parameter, in float64."""
    module.double().train(train)
    params = list(module.parameters())

    def fn(x, *_):  # the parameters are perturbed in place through the same Tensors
        return module(x)

    assert mc.gradcheck(fn, (x, *params), atol=1e-6, rtol=1e-4)


def enough_for_batch_norm(train, n, h, w):
    return not train or n * h * w > 1


# ----------------------------------------------------------------------------- gradients
@settings(max_examples=8)
@given(channels_st, reduction_st, batch_st, side_st, side_st)
def test_gradcheck_squeeze_excitation(c, r, n, h, w):
    module = randomize_(SqueezeExcitation(c, r))
    check_module_grads(module, rand_input((n, c, h, w)), train=True)


@settings(max_examples=8)
@given(channels_st, reduction_st, batch_st, side_st, side_st, POOLS, st.booleans())
def test_gradcheck_channel_attention(c, r, n, h, w, pools, bias):
    module = randomize_(ChannelAttention(c, r, pools, bias=bias))
    check_module_grads(module, rand_input((n, c, h, w)), train=True)


@settings(max_examples=10)
@given(channels_st, kernel_st, batch_st, side_st, side_st, st.booleans(), st.booleans())
def test_gradcheck_spatial_attention(c, k, n, h, w, train, norm):
    assume(enough_for_batch_norm(train, n, h, w))
    module = randomize_(SpatialAttention(k, norm=norm))
    check_module_grads(module, rand_input((n, c, h, w)), train)


@settings(max_examples=10)
@given(channels_st, reduction_st, kernel_st, batch_st, side_st, side_st, st.booleans())
def test_gradcheck_cbam(c, r, k, n, h, w, train):
    assume(enough_for_batch_norm(train, n, h, w))
    module = randomize_(CBAM(c, r, k))
    check_module_grads(module, rand_input((n, c, h, w)), train)


@pytest.mark.parametrize("preset", ["official", "timm", "paper"])
def test_gradcheck_cbam_presets(preset):
    module = randomize_(getattr(CBAM, preset)(6, 2, 3))
    check_module_grads(module, rand_input((2, 6, 3, 4)), train=True)


# ----------------------------------------------------------------------------- oracle
def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _conv_same(x, w):
    """(N, 2, H, W) * (1, 2, k, k) -> (N, 1, H, W), zero padding k // 2 (cross-correlation)."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, 1, h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, 0, i, j] = np.einsum("ncij,cij->n", xp[:, :, i : i + k, j : j + k], w[0])
    return out


def oracle_cbam(sd, x, eps=1e-5):
    """CBAM in eval mode from its state dict, written out in NumPy (Eq. 1-3)."""

    def mlp(z):
        hid = np.maximum(z @ sd["channel.mlp.0.weight"].T + sd["channel.mlp.0.bias"], 0)
        return hid @ sd["channel.mlp.2.weight"].T + sd["channel.mlp.2.bias"]

    mc_w = _sigmoid(mlp(x.mean((2, 3))) + mlp(x.max((2, 3))))[:, :, None, None]  # Eq. 2
    x1 = mc_w * x
    pooled = np.concatenate([x1.mean(1, keepdims=True), x1.max(1, keepdims=True)], 1)
    z = _conv_same(pooled, sd["spatial.conv.weight"])
    z = (z - sd["spatial.bn.running_mean"]) / np.sqrt(sd["spatial.bn.running_var"] + eps)
    ms = _sigmoid(z * sd["spatial.bn.weight"] + sd["spatial.bn.bias"])  # Eq. 3
    return ms * x1, mc_w, ms


@pytest.mark.parametrize("k", [3, 7])
def test_cbam_matches_numpy_oracle(k):
    module = randomize_(CBAM(12, 4, k)).double().eval()
    x = rand_input((2, 12, 5, 6), requires_grad=False)
    want, want_channel, want_spatial = oracle_cbam(module.state_dict(), x.numpy())
    np.testing.assert_allclose(module(x).numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(module.last_channel_weights.numpy(), want_channel, rtol=1e-12)
    np.testing.assert_allclose(module.last_spatial_map.numpy(), want_spatial, rtol=1e-12)


def test_squeeze_excitation_matches_numpy_oracle():
    module = randomize_(SqueezeExcitation(8, 2)).double()
    sd = module.state_dict()
    x = rand_input((3, 8, 4, 2), requires_grad=False)
    hid = np.maximum(x.numpy().mean((2, 3)) @ sd["fc1.weight"].T + sd["fc1.bias"], 0)
    s = _sigmoid(hid @ sd["fc2.weight"].T + sd["fc2.bias"])[:, :, None, None]
    np.testing.assert_allclose(module(x).numpy(), s * x.numpy(), rtol=1e-12)


def test_float32_in_float32_out():
    module = CBAM(16, 4)
    y = module(mc.randn(2, 16, 5, 5))
    assert y.dtype == mc.float32 and y.shape == (2, 16, 5, 5)


def test_spatial_batch_norm_updates_running_stats_in_train_mode_only():
    module = randomize_(SpatialAttention(3))
    x = rand_input((2, 4, 5, 5), requires_grad=False)
    before = module.state_dict()["bn.running_mean"].copy()
    module.double().eval()(x)
    np.testing.assert_array_equal(module.state_dict()["bn.running_mean"], before)
    module.train()(x)
    assert module.state_dict()["bn.num_batches_tracked"] == 1
    assert not np.array_equal(module.state_dict()["bn.running_mean"], before)


# ----------------------------------------------------------------------------- layout
def shapes_of(module):
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def spatial_shapes(k, prefix=""):
    shapes = {f"{prefix}conv.weight": (1, 2, k, k)}
    shapes.update({f"{prefix}bn.{name}": (1,) for name in BN})
    shapes[f"{prefix}bn.num_batches_tracked"] = ()
    return shapes


def mlp_shapes(c, hidden, prefix="", names=("mlp.0", "mlp.2")):
    first, second = names
    return {
        f"{prefix}{first}.weight": (hidden, c),
        f"{prefix}{first}.bias": (hidden,),
        f"{prefix}{second}.weight": (c, hidden),
        f"{prefix}{second}.bias": (c,),
    }


@pytest.mark.parametrize("c, r, hidden", [(64, 16, 4), (8, 16, 1), (24, 16, 1), (6, 4, 1)])
def test_state_dict_layout_matches_api_table(c, r, hidden):
    assert shapes_of(SqueezeExcitation(c, r)) == mlp_shapes(c, hidden, names=("fc1", "fc2"))
    assert shapes_of(ChannelAttention(c, r)) == mlp_shapes(c, hidden)
    assert shapes_of(SpatialAttention(3)) == spatial_shapes(3)
    want = {**mlp_shapes(c, hidden, "channel."), **spatial_shapes(7, "spatial.")}
    assert shapes_of(CBAM(c, r)) == want
    assert list(CBAM(c, r).state_dict()) == list(want)  # the order, too
    assert shapes_of(CBAM(c, r, spatial=False)) == mlp_shapes(c, hidden, "channel.")


def test_state_dict_dtypes():
    sd = CBAM(16).state_dict()
    assert sd["spatial.bn.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in sd.items() if "num_batches" not in k)


def test_exported_from_minicbam_nn():
    assert nn.CBAM is CBAM and nn.SqueezeExcitation is SqueezeExcitation
    assert nn.ChannelAttention is ChannelAttention and nn.SpatialAttention is SpatialAttention


def test_load_state_dict_strict_round_trip():
    a, b = randomize_(CBAM(32, 8, 3)), CBAM(32, 8, 3)
    b.load_state_dict(a.state_dict(), strict=True)
    x = mc.randn(2, 32, 4, 4)
    np.testing.assert_array_equal(a.eval()(x).numpy(), b.eval()(x).numpy())


# ----------------------------------------------------------------------------- presets
def test_official_preset():
    module = CBAM.official(64)
    sd = module.state_dict()
    assert shapes_of(module) == {**mlp_shapes(64, 4, "channel."), **spatial_shapes(7, "spatial.")}
    assert module.spatial.bn.momentum == 0.01 and module.spatial.bn.eps == 1e-5
    # ResidualNet's init: SpatialGate BN weight 0, every bias 0, conv kaiming fan_out.
    for key in ("spatial.bn.weight", "spatial.bn.bias", "channel.mlp.0.bias", "channel.mlp.2.bias"):
        assert not sd[key].any(), key
    module(mc.randn(2, 64, 3, 3))
    np.testing.assert_allclose(module.last_spatial_map.numpy(), 0.5)  # sigmoid(0)
    mc.manual_seed(0)
    conv = CBAM.official(64, kernel_size=7).spatial.conv.weight.numpy()
    assert abs(conv.std() - np.sqrt(2 / 49)) < 0.3 * np.sqrt(2 / 49)  # fan_out = 1 * 7 * 7


def test_official_spatial_conv_is_kaiming_normal_fan_out():
    # fan_out = 1 * k * k (one output map), fan_in = 2 * k * k: the stds differ by sqrt(2)
    mc.manual_seed(3)
    w = np.concatenate(
        [CBAM.official(8, 2, 7).spatial.conv.weight.numpy().ravel() for _ in range(20)]
    )
    assert w.std() == pytest.approx(np.sqrt(2 / 49), rel=0.1)
    assert abs(w.mean()) < 0.05


@pytest.mark.parametrize("c, r, hidden", [(64, 16, 4), (24, 16, 2), (40, 16, 3), (8, 16, 1)])
def test_timm_preset(c, r, hidden):
    assert timm_hidden(c, r) == hidden  # make_divisible(c / r, 1, round_limit=0.)
    module = CBAM.timm(c, r)
    want = {"channel.mlp.0.weight": (hidden, c), "channel.mlp.2.weight": (c, hidden)}
    assert shapes_of(module) == {**want, **spatial_shapes(7, "spatial.")}
    assert module.spatial.bn.momentum == 0.1


def test_paper_preset_is_eq_2_and_3():
    module = CBAM.paper(32, 8, 3)
    want = {"channel.mlp.0.weight": (4, 32), "channel.mlp.2.weight": (32, 4)}
    assert shapes_of(module) == {**want, "spatial.conv.weight": (1, 2, 3, 3)}


def test_make_attention_kinds():
    assert make_attention(None, 8) is None
    assert isinstance(make_attention("se", 8), SqueezeExcitation)
    cam = make_attention("cam", 32, "official")
    assert isinstance(cam, CBAM) and cam.spatial is None and cam.channel.mlp[0].bias is not None
    sam = make_attention("sam", 32, "official", kernel_size=3)
    assert isinstance(sam, SpatialAttention) and sam.bn.momentum == 0.01
    assert not sam.bn.weight.numpy().any()
    assert make_attention("sam", 32, "paper").bn is None
    assert make_attention("cbam", 32, "timm").channel.mlp[0].bias is None


# ----------------------------------------------------------------------------- maps
def test_attention_maps_are_exposed_and_detached():
    module = CBAM(8, 2, 3)
    assert module.last_channel_weights is None and module.last_spatial_map is None
    x = rand_input((3, 8, 5, 4))
    y = module.double()(x)
    cw, sm = module.last_channel_weights, module.last_spatial_map
    assert cw.shape == (3, 8, 1, 1) and sm.shape == (3, 1, 5, 4)
    assert not cw.requires_grad and not sm.requires_grad and cw.is_leaf
    assert ((cw.numpy() > 0) & (cw.numpy() < 1)).all()
    # F'' = M_s(F') * F' with F' = M_c(F) * F (Eq. 1)
    np.testing.assert_allclose(y.numpy(), sm.numpy() * (cw.numpy() * x.numpy()), rtol=1e-12)
    se = SqueezeExcitation(8, 2).double()
    se(x)
    assert se.last_channel_weights.shape == (3, 8, 1, 1)
    cbam = CBAM(8, 2, spatial=False).double()
    cbam(x)
    assert cbam.last_spatial_map is None and cbam.last_channel_weights.shape == (3, 8, 1, 1)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "module, shape, message",
    [
        (
            ChannelAttention(64),
            (2, 32, 8, 8),
            "ChannelAttention(64): expected input with 64 channels, got shape (2, 32, 8, 8)",
        ),
        (
            SqueezeExcitation(16),
            (2, 8, 4, 4),
            "SqueezeExcitation(16): expected input with 16 channels, got shape (2, 8, 4, 4)",
        ),
        (
            CBAM(64),
            (2, 32, 8, 8),
            "ChannelAttention(64): expected input with 64 channels, got shape (2, 32, 8, 8)",
        ),
        (ChannelAttention(4), (2, 4), "expected a 4-D input (N, C, H, W), got shape (2, 4)"),
        (
            SpatialAttention(),
            (4, 4, 4),
            "SpatialAttention(kernel_size=7): expected a 4-D input (N, C, H, W), got shape (4, 4, 4)",
        ),
    ],
)
def test_input_errors(module, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        module(mc.zeros(*shape))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SpatialAttention(5), "kernel_size must be 3 or 7, got 5"),
        (lambda: ChannelAttention(0), "channels must be a positive int, got 0"),
        (lambda: ChannelAttention(8, 0), "reduction must be a positive int, got 0"),
        (lambda: SqueezeExcitation(8, 2.5), "reduction must be a positive int, got 2.5"),
        (lambda: ChannelAttention(8, pool_types=("lse",)), "pool_types must be distinct"),
        (lambda: ChannelAttention(8, pool_types=()), "pool_types must be distinct"),
        (lambda: ChannelAttention(8, pool_types=("avg", "avg")), "pool_types must be distinct"),
        (lambda: CBAM(8, kernel_size=4), "kernel_size must be 3 or 7, got 4"),
        (lambda: make_attention("bam", 8), "attention must be one of"),
        (lambda: make_attention("cbam", 8, "keras"), "attention_variant must be one of"),
    ],
)
def test_constructor_errors(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


# ----------------------------------------------------------------------------- CUDA
def _forward_backward(module, x, device):
    module.to(device)
    module.zero_grad()
    xt = mc.tensor(x, dtype=mc.float64, device=device, requires_grad=True)
    y = module(xt)
    v = np.random.default_rng(1).standard_normal(y.shape)
    (y * mc.tensor(v, dtype=mc.float64, device=device)).sum().backward()
    grads = [p.grad.numpy() for p in module.parameters()]
    maps = [getattr(module, name, None) for name in ("last_channel_weights", "last_spatial_map")]
    return [y.numpy(), xt.grad.numpy(), *grads, *(m.numpy() for m in maps if m is not None)]


@pytest.mark.cuda
@pytest.mark.parametrize(
    "build, train",
    [
        (lambda: CBAM(4, 2, 3), True),
        (lambda: CBAM(4, 2, 3), False),
        (lambda: SqueezeExcitation(4, 2), True),
        (lambda: CBAM.paper(4, 2), True),
    ],
)
def test_cuda_matches_cpu(build, train):
    module = randomize_(build()).double().train(train)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    cpu = _forward_backward(module, x, "cpu")
    gpu = _forward_backward(module, x, "cuda")
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
