"""Numerical parity with PyTorch: the official CBAM, timm's CbamModule and SEModule, minicbam's
own layout written in PyTorch, and CBAM / SE ResNets, in float64.

Each test builds the PyTorch reference (tests/torch_reference.py), randomises ALL its weights
and BatchNorm running statistics, exports the state dict to NumPy, converts it
(``from_official`` / ``from_timm`` where the layout differs) and loads it into the minicbam
module with ``strict=True``. Then, in train and in eval mode, both run the same input and
the same output cotangent ``v``; we compare the output, the gradient of ``<v, y>`` w.r.t. the
input and w.r.t. every parameter (torch's gradients converted with the same converter), and
after a train-mode forward the updated running statistics. Errors are relative to the largest
magnitude of each reference array; the largest per variant is printed at the end (``-s``).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import torch_reference as ref

import minicbam as mc
from minicbam.interop import from_official, from_timm
from minicbam.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18
from minicbam.nn.attention import CBAM, SqueezeExcitation
from minicbam.io.serialization import load

TOL = 1e-10  # float64
MAX_ERRORS = {}


def identity(state_dict):
    return dict(state_dict)


@pytest.fixture(scope="module", autouse=True)
def report_errors():
    yield
    print("\nmax relative error vs PyTorch (float64):")
    for variant, err in sorted(MAX_ERRORS.items()):
        print(f"  {variant:32s} {err:.2e}")


def rel_err(got, want):
    scale = max(float(np.max(np.abs(want))), 1e-300) if want.size else 1.0
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


# ----------------------------------------------------------------------------- running
def run_torch(module, x, seed, train):
    """Output, input gradient, parameter gradients and state after one forward/backward."""
    module.double().train(train)
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    v = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    (y * torch.tensor(v)).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads, ref.numpy_state_dict(module)


def run_minicbam(module, x, seed, train):
    module.double().train(train)
    xm = mc.tensor(x, dtype=mc.float64, requires_grad=True)
    y = module(xm)
    v = np.random.default_rng(seed).standard_normal(y.shape)
    (y * mc.tensor(v, dtype=mc.float64)).sum().backward()
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return y.numpy(), xm.grad.numpy(), grads, module.state_dict()


def check_parity(variant, torch_module, mc_module, convert, x_shape, train, seed=0):
    """Load torch's randomised weights into ``mc_module`` (strict), then compare everything."""
    ref.randomize(torch_module, seed)
    mc_module.load_state_dict(convert(ref.numpy_state_dict(torch_module)), strict=True)
    x = np.random.default_rng(seed + 1).standard_normal(x_shape)
    y_t, gx_t, grads_t, state_t = run_torch(torch_module, x, seed + 2, train)
    y_m, gx_m, grads_m, state_m = run_minicbam(mc_module, x, seed + 2, train)
    grads_t = convert(grads_t)  # same keys (and swapped pool channels) as minicbam's
    state_t = convert(state_t)
    assert sorted(grads_m) == sorted(grads_t)
    errors = {"output": rel_err(y_m, y_t), "input grad": rel_err(gx_m, gx_t)}
    errors.update({f"grad {k}": rel_err(grads_m[k], grads_t[k]) for k in grads_t})
    errors.update({f"state {k}": rel_err(state_m[k], state_t[k]) for k in state_t})
    worst = max(errors, key=errors.get)
    key = f"{variant} ({'train' if train else 'eval'})"
    MAX_ERRORS[key] = max(MAX_ERRORS.get(key, 0.0), errors[worst])
    assert errors[worst] < TOL, f"{variant}: worst relative error {errors[worst]:.3e} in {worst}"
    return errors


def can_train(train, n, h, w):
    """BatchNorm needs more than one value per channel to have a batch variance. With only two,
    it maps them to about +-1 whatever they are, so its backward is pure cancellation (relative
    errors ~1e-10 on both sides); four or more keep the comparison well conditioned."""
    return not train or n * h * w >= 4


# ----------------------------------------------------------------------------- modules
sizes = st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=6)
@given(sizes, st.integers(1, 4), st.booleans(), st.integers(0, 10**6))
def test_official_cbam(shape, reduction, train, seed):
    n, c, h, w = shape
    assume(reduction <= c and can_train(train, n, h, w))  # the official hidden is C // r
    torch_module = ref.OfficialCBAM(c, reduction)
    check_parity(
        "official CBAM",
        torch_module,
        CBAM.official(c, reduction),
        from_official,
        shape,
        train,
        seed,
    )


@settings(max_examples=6)
@given(sizes, st.integers(1, 4), st.sampled_from([3, 7]), st.booleans(), st.integers(0, 10**6))
def test_timm_cbam(shape, reduction, k, train, seed):
    n, c, h, w = shape
    assume(can_train(train, n, h, w))
    torch_module = ref.TimmCbam(c, rd_ratio=1.0 / reduction, spatial_kernel_size=k)
    check_parity(
        "timm CbamModule", torch_module, CBAM.timm(c, reduction, k), from_timm, shape, train, seed
    )


@settings(max_examples=6)
@given(sizes, st.integers(1, 4), st.sampled_from([3, 7]), st.booleans(), st.integers(0, 10**6))
def test_minicbam_layout_cbam(shape, reduction, k, train, seed):
    n, c, h, w = shape
    assume(can_train(train, n, h, w))
    torch_module = ref.TorchCBAM(c, reduction, k)
    check_parity(
        "CBAM (minicbam layout)", torch_module, CBAM(c, reduction, k), identity, shape, train, seed
    )


@settings(max_examples=4)
@given(sizes, st.integers(1, 4), st.integers(0, 10**6))
def test_minicbam_layout_channel_only(shape, reduction, seed):
    c = shape[1]
    torch_module = ref.TorchCBAM(c, reduction, spatial=False)
    mc_module = CBAM(c, reduction, spatial=False)
    check_parity("CBAM spatial=False", torch_module, mc_module, identity, shape, True, seed)


@settings(max_examples=5)
@given(sizes, st.integers(1, 4), st.integers(0, 10**6))
def test_squeeze_excitation(shape, reduction, seed):
    c = shape[1]
    torch_module = ref.TorchSE(c, reduction)
    check_parity(
        "SE (minicbam layout)",
        torch_module,
        SqueezeExcitation(c, reduction),
        identity,
        shape,
        True,
        seed,
    )


@pytest.mark.parametrize("c, reduction", [(64, 8), (32, 2), (128, 16)])
def test_timm_se_module(c, reduction):
    # timm rounds SE's hidden width to a multiple of 8: these sizes agree with C // r.
    torch_module = ref.TimmSE(c, rd_ratio=1.0 / reduction)
    check_parity(
        "timm SEModule",
        torch_module,
        SqueezeExcitation(c, reduction),
        from_timm,
        (2, c, 3, 3),
        True,
    )


# ----------------------------------------------------------------------------- ResNets
def official_cbam(reduction):
    return lambda channels: ref.OfficialCBAM(channels, reduction)


def timm_cbam(reduction, k):
    return lambda channels: ref.TimmCbam(channels, 1.0 / reduction, spatial_kernel_size=k)


RESNETS = {
    # name: (torch attn factory, attribute, converter, minicbam attention, variant, kwargs)
    "official CBAM": (
        official_cbam(2),
        "cbam",
        from_official,
        "cbam",
        "official",
        {"reduction": 2},
    ),
    "timm CBAM": (
        timm_cbam(4, 3),
        "se",
        from_timm,
        "cbam",
        "timm",
        {"reduction": 4, "kernel_size": 3},
    ),
    "SE": (lambda c: ref.TorchSE(c, 2), "attn", identity, "se", "default", {"reduction": 2}),
    "no attention": (None, "attn", identity, None, "default", {}),
}


def build_pair(name, block, layers, stem, width=4, num_classes=5):
    make_attn, attr, convert, attention, variant, kwargs = RESNETS[name]
    torch_block = ref.TorchBasicBlock if block is BasicBlock else ref.TorchBottleneck
    torch_model = ref.TorchResNet(torch_block, layers, num_classes, make_attn, attr, stem, width)
    mc_model = ResNet(
        block,
        layers,
        num_classes,
        attention,
        stem,
        attention_variant=variant,
        width=width,
        **kwargs,
    )
    return torch_model, mc_model, convert


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(RESNETS))
@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_small_resnet(name, block, train):
    torch_model, mc_model, convert = build_pair(name, block, [1, 1, 1, 1], "cifar")
    # 16x16: layer4's maps are 2x2, so its BatchNorms see 8 values per channel.
    check_parity(
        f"ResNet-{block.__name__} {name}", torch_model, mc_model, convert, (2, 3, 16, 16), train
    )


@pytest.mark.parametrize("stem, size", [("cifar", 16), ("imagenet", 64)])
def test_resnet18_official_cbam(stem, size):
    torch_model, mc_model, convert = build_pair("official CBAM", BasicBlock, [2, 2, 2, 2], stem)
    assert sorted(
        resnet18(
            attention="cbam",
            attention_variant="official",
            stem=stem,
            width=4,
            num_classes=5,
            reduction=2,
        ).state_dict()
    ) == sorted(convert(ref.numpy_state_dict(torch_model)))
    check_parity("resnet18 official CBAM", torch_model, mc_model, convert, (2, 3, size, size), True)


# ----------------------------------------------------------------------------- .pth files
def test_official_checkpoint_pth_round_trip(tmp_path):
    """A DataParallel checkpoint written by torch.save, read by minicbam without torch."""
    torch_model, mc_model, _ = build_pair("official CBAM", Bottleneck, [1, 1, 1, 1], "cifar")
    ref.randomize(torch_model, 3)
    state = {"module." + k: v for k, v in torch_model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": state, "best_prec1": 77.1}, path)
    checkpoint = load(path)
    assert checkpoint["epoch"] == 90
    mc_model.load_state_dict(from_official(checkpoint), strict=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    with torch.no_grad():
        want = torch_model.double().eval()(torch.tensor(x)).numpy()
    got = mc_model.double().eval()(mc.tensor(x, dtype=mc.float64)).numpy()
    MAX_ERRORS[".pth official ResNet (eval)"] = rel_err(got, want)
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("source", ["official", "timm"])
def test_cbam_pth_round_trip(tmp_path, source):
    if source == "official":
        torch_module, mc_module, convert = (
            ref.OfficialCBAM(32, 8),
            CBAM.official(32, 8),
            from_official,
        )
    else:
        torch_module, mc_module, convert = ref.TimmCbam(32, 1 / 8), CBAM.timm(32, 8), from_timm
    ref.randomize(torch_module, 5)
    path = tmp_path / "cbam.pth"
    torch.save(torch_module.state_dict(), path)
    mc_module.load_state_dict(convert(load(path)), strict=True)
    x = np.random.default_rng(1).standard_normal((2, 32, 5, 5)).astype(np.float32)
    with torch.no_grad():
        want = torch_module.float().eval()(torch.tensor(x)).numpy()
    got = mc_module.eval()(mc.tensor(x)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
