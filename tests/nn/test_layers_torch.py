"""Layers against ``torch.nn``: same state-dict keys and shapes, and, with torch's weights
loaded, the same outputs (float64, rtol 1e-6), running statistics and parameter gradients."""

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn

torch = pytest.importorskip("torch")
tnn = torch.nn

RTOL, ATOL = 1e-6, 1e-9

# (name, minicbam factory, torch factory, input shape)
LAYERS = [
    ("conv", lambda: nn.Conv2d(3, 4, 3), lambda: tnn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
    (
        "conv_strided",
        lambda: nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 2), dilation=(2, 1), groups=2),
        lambda: tnn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 2), dilation=(2, 1), groups=2),
        (2, 4, 9, 8),
    ),
    (
        "conv_same_nobias",
        lambda: nn.Conv2d(2, 3, 5, padding="same", bias=False),
        lambda: tnn.Conv2d(2, 3, 5, padding="same", bias=False),
        (1, 2, 6, 6),
    ),
    (
        # an even kernel: 'same' pads one more pixel after than before, as F.conv2d does
        "conv_same_even_kernel",
        lambda: nn.Conv2d(2, 3, 4, padding="same"),
        lambda: tnn.Conv2d(2, 3, 4, padding="same"),
        (1, 2, 6, 7),
    ),
    (
        "conv_same_dilated_even",
        lambda: nn.Conv2d(2, 2, (2, 3), padding="same", dilation=(3, 2)),
        lambda: tnn.Conv2d(2, 2, (2, 3), padding="same", dilation=(3, 2)),
        (2, 2, 7, 6),
    ),
    (
        "conv_valid",
        lambda: nn.Conv2d(2, 3, 3, padding="valid"),
        lambda: tnn.Conv2d(2, 3, 3, padding="valid"),
        (1, 2, 5, 5),
    ),
    ("linear", lambda: nn.Linear(5, 3), lambda: tnn.Linear(5, 3), (4, 5)),
    ("linear_3d", lambda: nn.Linear(5, 3, bias=False), lambda: tnn.Linear(5, 3, False), (2, 4, 5)),
    ("bn2d", lambda: nn.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3), (4, 3, 5, 5)),
    (
        "bn2d_plain",
        lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False),
        lambda: tnn.BatchNorm2d(3, affine=False, track_running_stats=False),
        (4, 3, 2, 3),
    ),
    (
        "bn2d_nobias",
        lambda: nn.BatchNorm2d(3, momentum=None, bias=False),
        lambda: tnn.BatchNorm2d(3, momentum=None, bias=False),
        (4, 3, 2, 3),
    ),
    ("bn1d", lambda: nn.BatchNorm1d(3), lambda: tnn.BatchNorm1d(3), (6, 3)),
    ("bn1d_3d", lambda: nn.BatchNorm1d(3), lambda: tnn.BatchNorm1d(3), (4, 3, 5)),
    ("relu", nn.ReLU, tnn.ReLU, (2, 3, 4)),
    ("sigmoid", nn.Sigmoid, tnn.Sigmoid, (2, 3, 4)),
    ("tanh", nn.Tanh, tnn.Tanh, (2, 3, 4)),
    ("softmax", lambda: nn.Softmax(dim=1), lambda: tnn.Softmax(dim=1), (2, 5, 3)),
    ("log_softmax", lambda: nn.LogSoftmax(-1), lambda: tnn.LogSoftmax(-1), (2, 5)),
    ("maxpool", lambda: nn.MaxPool2d(2), lambda: tnn.MaxPool2d(2), (2, 3, 6, 7)),
    (
        "maxpool_pad",
        lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        lambda: tnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        (1, 2, 8, 7),
    ),
    (
        "avgpool",
        lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        lambda: tnn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        (2, 3, 7, 6),
    ),
    (
        "adaptive_avg",
        lambda: nn.AdaptiveAvgPool2d(1),
        lambda: tnn.AdaptiveAvgPool2d(1),
        (2, 3, 5, 4),
    ),
    (
        "adaptive_max",
        lambda: nn.AdaptiveMaxPool2d((2, 3)),
        lambda: tnn.AdaptiveMaxPool2d((2, 3)),
        (2, 3, 5, 7),
    ),
    ("flatten", nn.Flatten, tnn.Flatten, (2, 3, 4, 5)),
    ("flatten_mid", lambda: nn.Flatten(0, 2), lambda: tnn.Flatten(0, 2), (2, 3, 4, 5)),
    ("identity", nn.Identity, tnn.Identity, (2, 3)),
    ("dropout_p0", lambda: nn.Dropout(0.0), lambda: tnn.Dropout(0.0), (4, 5)),
]


def small_net(lib):
    return lib.Sequential(
        lib.Conv2d(2, 3, 3, padding=1),
        lib.BatchNorm2d(3),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Linear(3 * 2 * 2, 4),
    )


def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def load_from_torch(ours, theirs):
    """Randomise torch's state (so that defaults cannot hide a mistake) and load it into ours."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in theirs.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            else:
                t.fill_(3)
    ours.double().load_state_dict(torch_state(theirs.double()))


@pytest.mark.parametrize("name, ours, theirs, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_state_dict_keys_shapes_dtypes_match_torch(name, ours, theirs, shape):
    mine, ref = ours().state_dict(), torch_state(theirs())
    assert list(mine) == list(ref)
    for key, value in ref.items():
        assert mine[key].shape == value.shape, key
        assert mine[key].dtype == value.dtype, key


@pytest.mark.parametrize("name, ours, theirs, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_repr_matches_torch(name, ours, theirs, shape):
    assert repr(ours()) == repr(theirs())


@pytest.mark.parametrize("name, ours, theirs, shape", LAYERS, ids=[c[0] for c in LAYERS])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_matches_torch_with_its_weights(name, ours, theirs, shape, mode):
    mine, ref = ours(), theirs()
    load_from_torch(mine, ref)
    if mode == "eval":
        mine.eval(), ref.eval()
    x = np.random.default_rng(1).standard_normal(shape)
    y = mine(mc.tensor(x)).numpy()
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    for key, value in torch_state(ref).items():  # running statistics after a training step
        np.testing.assert_allclose(mine.state_dict()[key], value, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_over_several_steps(momentum):
    mine, ref = nn.BatchNorm2d(3, momentum=momentum).double(), tnn.BatchNorm2d(3, momentum=momentum)
    ref.double()
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 3, 2)) * 2 + 1
        mine(mc.tensor(x)), ref(torch.from_numpy(x))
    for key, value in torch_state(ref).items():
        np.testing.assert_allclose(mine.state_dict()[key], value, rtol=RTOL, atol=ATOL)
    assert mine.num_batches_tracked.item() == 3
    mine.eval(), ref.eval()  # eval uses (and leaves) the running statistics
    x = rng.standard_normal((2, 3, 3, 2))
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(mine(mc.tensor(x)).numpy(), y_ref, rtol=RTOL, atol=ATOL)
    assert mine.num_batches_tracked.item() == 3


def test_network_outputs_and_gradients_match_torch():
    mine, ref = small_net(nn), small_net(tnn)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert repr(mine) == repr(ref)
    load_from_torch(mine, ref)
    rng = np.random.default_rng(3)
    x, target = rng.standard_normal((3, 2, 4, 4)), np.array([0, 3, 1])
    loss = nn.CrossEntropyLoss()(mine(mc.tensor(x)), mc.tensor(target))
    loss_ref = tnn.CrossEntropyLoss()(ref(torch.from_numpy(x)), torch.from_numpy(target))
    loss.backward(), loss_ref.backward()
    np.testing.assert_allclose(loss.item(), loss_ref.item(), rtol=RTOL)
    theirs = dict(ref.named_parameters())
    for key, p in mine.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), theirs[key].grad.numpy(), rtol=1e-6, atol=1e-9)
    for key, value in torch_state(ref).items():
        np.testing.assert_allclose(mine.state_dict()[key], value, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_torch(reduction):
    rng = np.random.default_rng(4)
    logits, target = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    weight = rng.uniform(0.5, 2.0, 4)
    ce = nn.CrossEntropyLoss(mc.tensor(weight), reduction=reduction, label_smoothing=0.1)
    ce_ref = tnn.CrossEntropyLoss(
        torch.from_numpy(weight), reduction=reduction, label_smoothing=0.1
    )
    assert list(ce.state_dict()) == list(ce_ref.state_dict()) == ["weight"]
    got = ce(mc.tensor(logits), mc.tensor(target)).numpy()
    want = ce_ref(torch.from_numpy(logits), torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL)
    b = rng.standard_normal((5, 4))
    got = nn.MSELoss(reduction)(mc.tensor(logits), mc.tensor(b)).numpy()
    want = tnn.MSELoss(reduction=reduction)(torch.from_numpy(logits), torch.from_numpy(b))
    np.testing.assert_allclose(got, want.numpy(), rtol=RTOL)


def test_dropout_modes():
    x = mc.ones(200, 100, dtype=mc.float64)
    drop = nn.Dropout(0.3)
    mc.manual_seed(0)
    y = drop(x).numpy()
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert np.mean(y == 0) == pytest.approx(0.3, abs=0.02)
    mc.manual_seed(0)
    np.testing.assert_array_equal(drop(x).numpy(), y)  # reproducible under manual_seed
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())


@pytest.mark.parametrize("shape", [(5,), (2, 5), (3, 2, 4), (2, 3, 2, 2)])
def test_softmax_without_dim_uses_torch_legacy_dim(shape):
    x = np.random.default_rng(5).standard_normal(shape)
    legacy = 0 if len(shape) in (1, 3) else 1  # torch's _get_softmax_dim
    e = np.exp(x - x.max(axis=legacy, keepdims=True))
    want = e / e.sum(axis=legacy, keepdims=True)
    np.testing.assert_allclose(nn.Softmax()(mc.tensor(x)).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(nn.LogSoftmax()(mc.tensor(x)).numpy(), np.log(want), rtol=1e-10)
    with pytest.warns(UserWarning):
        ref = tnn.Softmax()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(want, ref, rtol=1e-12)
