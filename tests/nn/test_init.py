"""``nn.init`` and the layers' default initialisation: PyTorch's formulas, bounds, statistics,
reproducibility under ``mc.manual_seed``, and in-place writes on CPU and CUDA arrays."""

import math

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn
from minicbam.nn import init


def test_gain_table():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="Unsupported"):
        init.calculate_gain("swish")


def test_fans():
    w = mc.zeros(16, 8, 3, 5)
    assert init._calculate_fan_in_and_fan_out(w) == (8 * 15, 16 * 15)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_uniform_(mc.zeros(4))


def test_kaiming_uniform_bound_and_statistics():
    mc.manual_seed(0)
    w = init.kaiming_uniform_(mc.zeros(256, 64, 3, 3), nonlinearity="relu")
    bound = math.sqrt(2) * math.sqrt(3 / (64 * 9))
    a = w.numpy()
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
    assert a.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert abs(a.mean()) < 0.01 * bound


def test_kaiming_normal_and_xavier_statistics():
    mc.manual_seed(1)
    a = init.kaiming_normal_(mc.zeros(512, 256), mode="fan_out", nonlinearity="relu").numpy()
    assert a.std() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    a = init.xavier_uniform_(mc.zeros(300, 200), gain=2.0).numpy()
    bound = 2.0 * math.sqrt(6 / 500)
    assert np.abs(a).max() <= bound and a.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    a = init.normal_(mc.zeros(100000, dtype=mc.float64), 3.0, 0.5).numpy()
    assert a.mean() == pytest.approx(3.0, abs=0.01) and a.std() == pytest.approx(0.5, rel=0.01)


def test_xavier_normal_statistics():
    mc.manual_seed(2)
    a = init.xavier_normal_(mc.zeros(300, 200), gain=1.5).numpy()
    assert a.std() == pytest.approx(1.5 * math.sqrt(2 / 500), rel=0.02)
    assert abs(a.mean()) < 0.01


def test_constant_inits_and_in_place_identity():
    p = nn.Parameter(mc.zeros(2, 3))
    array = p.data
    assert init.ones_(p) is p and p.data is array and np.all(p.numpy() == 1)
    init.constant_(p, 2.5)
    assert np.all(p.numpy() == 2.5)
    init.zeros_(p)
    assert np.all(p.numpy() == 0)


def test_layer_defaults_match_pytorch_formulas():
    mc.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, groups=2)
    fan_in = 8 * 9  # in_channels // groups * KH * KW
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) gives exactly this bound
    assert np.abs(conv.weight.numpy()).max() <= bound
    assert np.abs(conv.weight.numpy()).max() > 0.95 * bound
    assert np.abs(conv.bias.numpy()).max() <= bound
    # the bias's bound is the weight's (fan_in), not 1 / sqrt(fan_out) (half of it here)
    assert np.abs(conv.bias.numpy()).max() > 0.6 * bound
    lin = nn.Linear(100, 50)
    assert np.abs(lin.weight.numpy()).max() <= 0.1 and np.abs(lin.bias.numpy()).max() <= 0.1
    assert np.abs(lin.bias.numpy()).max() > 0.09  # the bound is 1 / sqrt(fan_in), not less
    bn = nn.BatchNorm2d(4)
    assert np.all(bn.weight.numpy() == 1) and np.all(bn.bias.numpy() == 0)
    assert np.all(bn.running_mean.numpy() == 0) and np.all(bn.running_var.numpy() == 1)
    assert bn.num_batches_tracked.item() == 0


def test_manual_seed_makes_initialisation_reproducible():
    mc.manual_seed(123)
    a = nn.Conv2d(3, 4, 3).state_dict()
    mc.manual_seed(123)
    b = nn.Conv2d(3, 4, 3).state_dict()
    c = nn.Conv2d(3, 4, 3).state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["weight"], c["weight"])


@pytest.mark.cuda
def test_init_on_cuda_matches_cpu_draws():
    mc.manual_seed(7)
    cpu = nn.Linear(4, 3)
    mc.manual_seed(7)
    gpu = nn.Linear(4, 3, device="cuda")
    assert gpu.weight.device == "cuda"
    np.testing.assert_array_equal(gpu.weight.numpy(), cpu.weight.numpy())
    array = gpu.weight.data
    init.constant_(gpu.weight, 0.5)
    assert gpu.weight.data is array and np.all(gpu.weight.numpy() == 0.5)
