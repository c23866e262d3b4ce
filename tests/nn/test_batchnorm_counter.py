"""BatchNorm's ``num_batches_tracked``: counted on the tensor's own device (no host scalar
lifted to a GPU), PyTorch's semantics and state-dict format on cpu and cuda."""

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn
from minicbam.device_events import count_device_events

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _batches(n, shape=(3, 2, 2, 2), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) * 2 + 1 for _ in range(n)]


@pytest.mark.parametrize("dev", DEVICES)
def test_counts_training_forwards_only(dev):
    bn = nn.BatchNorm2d(2).double().to(dev)
    counter = bn.num_batches_tracked
    assert counter.shape == () and counter.dtype == np.int64 and counter.device == dev
    for x in _batches(3):
        bn(mc.tensor(x, device=dev))
    bn.eval()
    bn(mc.tensor(_batches(1)[0], device=dev))
    assert bn.num_batches_tracked is counter  # updated in place, same tensor
    assert counter.item() == 3
    state = bn.state_dict()["num_batches_tracked"]
    assert isinstance(state, np.ndarray) and state.dtype == np.int64 and state.shape == ()
    assert int(state) == 3


@pytest.mark.parametrize("dev", DEVICES)
def test_load_state_dict_sets_the_count_and_momentum_none_uses_it(dev):
    # momentum=None: the factor is 1 / count, so a loaded count changes the next update
    src = nn.BatchNorm2d(2, momentum=None).double()
    src.load_state_dict({**src.state_dict(), "num_batches_tracked": np.array(4, np.int64)})
    assert src.num_batches_tracked.item() == 4
    bn = nn.BatchNorm2d(2, momentum=None).double().to(dev)
    bn.load_state_dict(src.state_dict())
    assert bn.num_batches_tracked.item() == 4
    x = _batches(1, seed=3)[0]
    bn(mc.tensor(x, device=dev))
    assert bn.num_batches_tracked.item() == 5
    batch_mean = x.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), batch_mean / 5, rtol=1e-12)
    bn.reset_running_stats()
    assert bn.num_batches_tracked.item() == 0


@pytest.mark.cuda
def test_cpu_and_cuda_counters_agree_over_steps():
    states = []
    for dev in ("cpu", "cuda"):
        bn = nn.BatchNorm2d(2, momentum=None).double().to(dev)
        for x in _batches(4, seed=5):
            bn(mc.tensor(x, device=dev))
        states.append(bn.state_dict())
    for key in states[0]:
        np.testing.assert_allclose(states[1][key], states[0][key], rtol=1e-12, err_msg=key)
    assert states[1]["num_batches_tracked"].dtype == np.int64


@pytest.mark.cuda
def test_cuda_count_update_copies_nothing():
    bn = nn.BatchNorm2d(2).to("cuda")
    x = mc.tensor(_batches(1)[0], dtype=np.float32, device="cuda")
    bn(x)  # warm-up: kernels built
    with count_device_events(strict=True) as ev:
        bn(x)
    assert (ev.host_to_device, ev.device_to_host, ev.host_arguments) == (0, 0, 0)
    assert bn.num_batches_tracked.item() == 2
