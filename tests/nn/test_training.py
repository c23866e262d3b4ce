"""A small CNN end to end: finite-difference gradients of the whole ``Sequential`` (input and
every parameter), and a few steps of plain SGD that make the loss fall, on CPU and CUDA."""

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn


def small_net(in_channels=2, channels=3, side=4, classes=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * (side // 2) ** 2, classes),
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gradcheck_of_a_small_network(mode):
    mc.manual_seed(0)
    net = small_net().double()
    net.train(mode == "train")
    if mode == "eval":  # non-trivial running statistics
        net[1].running_mean.data[:] = [0.1, -0.2, 0.3]
        net[1].running_var.data[:] = [0.5, 1.5, 2.0]
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 2, 4, 4)), requires_grad=True)
    params = list(net.parameters())
    # Parameters are inputs too: gradcheck perturbs their arrays, which the net reads.
    assert mc.gradcheck(lambda x, *ps: net(x), [x, *params], atol=1e-6, rtol=1e-4)
    if mode == "train":
        assert net[1].num_batches_tracked.item() > 1  # running stats moved, outputs did not


def synthetic_problem(n=16, side=4, seed=0):
    """Class 0: bright top half; class 1: bright bottom half; plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0.0, 0.3, (n, 1, side, side))
    half = side // 2
    x[y == 0, :, :half] += 1.0
    x[y == 1, :, half:] += 1.0
    return x.astype(np.float32), y


def train(net, x, y, steps, lr, device):
    """Plain SGD, written out: p <- p - lr * grad. Returns the loss of every step."""
    x, y = mc.tensor(x, device=device), mc.tensor(y, device=device)
    loss_fn, losses = nn.CrossEntropyLoss(), []
    for _ in range(steps):
        net.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        with mc.no_grad():
            for p in net.parameters():
                p.data = (p - p.grad * lr).data
        losses.append(loss.item())
    return losses


def test_network_trains_on_cpu():
    mc.manual_seed(0)
    net = small_net(in_channels=1, channels=4, classes=2)
    params = list(net.parameters())
    losses = train(net, *synthetic_problem(), steps=15, lr=0.2, device="cpu")
    assert losses[-1] < 0.5 * losses[0], losses
    assert list(net.parameters()) == params  # the same Parameter objects throughout
    assert net[1].num_batches_tracked.item() == 15


@pytest.mark.cuda
def test_network_trains_on_cuda():
    mc.manual_seed(0)
    cpu_net = small_net(in_channels=1, channels=2, classes=2)
    mc.manual_seed(0)
    net = small_net(in_channels=1, channels=2, classes=2)
    params = list(net.parameters())
    assert net.to("cuda") is net and all(p.device == "cuda" for p in net.parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert net[1].num_batches_tracked.device == "cuda"
    x, y = synthetic_problem(n=8)
    np.testing.assert_allclose(
        net(mc.tensor(x, device="cuda")).numpy(),
        cpu_net(mc.tensor(x)).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    losses = train(net, x, y, steps=6, lr=0.3, device="cuda")
    assert losses[-1] < losses[0], losses
    assert net[1].num_batches_tracked.item() == 7
    sd = net.cpu().state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert net[0].weight.device == "cpu"
