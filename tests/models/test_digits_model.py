"""DigitsCNN: shapes on 8x8 and 28x28 inputs, keys, attention maps, gradients, and a short
training run on scikit-learn's digits (the >= 98 % accuracy run is timed by the lead)."""

import numpy as np
import pytest

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import optim
from minicbam.models import DigitsCNN
from minicbam.nn.attention import CBAM, SpatialAttention, SqueezeExcitation

KINDS = [None, "se", "cam", "sam", "cbam"]


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("size", [8, 28])
def test_output_shapes(attention, size):
    model = DigitsCNN(attention=attention)
    assert model(mc.randn(3, 1, size, size)).shape == (3, 10)


def test_keys_and_size():
    model = DigitsCNN()
    sd = model.state_dict()
    assert sd["block1.conv.weight"].shape == (32, 1, 3, 3)
    assert sd["block2.conv.weight"].shape == (64, 32, 3, 3)
    assert sd["block1.attn.channel.mlp.0.weight"].shape == (4, 32)  # reduction 8
    assert sd["block2.attn.spatial.conv.weight"].shape == (1, 2, 3, 3)
    assert sd["fc.weight"].shape == (10, 256)
    assert model.num_parameters() == 22_910
    assert not any(".attn." in k for k in DigitsCNN(attention=None).state_dict())


def test_attention_options():
    model = DigitsCNN(
        num_classes=5,
        in_channels=3,
        attention="cbam",
        width=8,
        attention_variant="official",
        reduction=4,
        kernel_size=7,
    )
    assert isinstance(model.block1.attn, CBAM)
    assert model.block1.attn.spatial.bn.momentum == 0.01
    assert model.block2.attn.channel.mlp[0].weight.shape == (4, 16)
    assert model(mc.randn(2, 3, 8, 8)).shape == (2, 5)
    assert isinstance(DigitsCNN(attention="se").block1.attn, SqueezeExcitation)
    assert isinstance(DigitsCNN(attention="sam").block2.attn, SpatialAttention)


def test_block_attention_sees_the_rectified_features():
    from minicbam import nn
    from minicbam.models.digits import ConvBlock

    class Record(nn.Module):
        def forward(self, x):
            self.seen = x
            return x * -1.0  # the block's output is the attention's, unrectified

    blk = ConvBlock(1, 4, Record()).double()
    x = mc.tensor(np.random.default_rng(1).standard_normal((2, 1, 5, 5)))
    y = blk(x).numpy()
    seen = blk.attn.seen.numpy()
    assert (seen >= 0).all() and (seen > 0).any()  # conv -> BN -> ReLU -> attention
    np.testing.assert_array_equal(y, -seen)


def test_attention_maps_after_forward():
    model = DigitsCNN().eval()
    model(mc.randn(4, 1, 8, 8))
    assert model.block1.attn.last_spatial_map.shape == (4, 1, 8, 8)
    assert model.block2.attn.last_spatial_map.shape == (4, 1, 4, 4)
    assert model.block2.attn.last_channel_weights.shape == (4, 64, 1, 1)


def test_gradcheck_input():
    model = DigitsCNN(width=2, reduction=1).double()
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 1, 4, 4)), requires_grad=True)
    assert mc.gradcheck(model, x, atol=1e-6, rtol=1e-4)


def test_short_training_lowers_the_loss():
    from minicbam.data import DataLoader, Digits

    mc.manual_seed(0)
    model = DigitsCNN()
    opt = optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(Digits("train"), batch_size=64, shuffle=True, seed=0)
    losses = []
    for step, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 14:
            break
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
