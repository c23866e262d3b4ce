"""minicbam.device_events: counting CUDA allocations, copies and launches (on the simulator
here, the same code path as on a GPU)."""

import numpy as np
import pytest

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import device
from minicbam.device_events import HostArrayError, count_device_events
from minicbam.models.digits import DigitsCNN
from minicbam.optim import Adam

pytestmark = pytest.mark.cuda


def test_counts_one_of_each():
    x = mc.randn(3, 4)
    with count_device_events() as ev:
        d = x.to("cuda")  # one copy in, one allocation
        y = (d * 2.0).relu()  # two launches, two allocations
        host = y.numpy()  # one copy out
    assert (ev.host_to_device, ev.device_to_host) == (1, 1)
    assert ev.launches == 2 and sum(ev.per_kernel.values()) == 2
    assert ev.allocations == 3 and ev.allocated_bytes == 3 * 12 * 4
    assert ev.pool_hits + ev.driver_allocations == ev.allocations
    np.testing.assert_allclose(host, np.maximum(x.numpy() * 2, 0))
    assert device.events is None  # switched off after the block


def test_launch_log_has_the_grid_stride_work_items():
    d = mc.randn(5, 7).to("cuda")
    with count_device_events() as ev:
        d.exp()
    (name, blocks, threads, items, largest), = ev.launch_log
    assert items == 35 and largest == 35 and blocks * threads >= 1


def test_a_numpy_array_reaching_a_kernel_is_a_hidden_copy():
    out = device.empty((4,), np.float32, "cuda")
    with count_device_events() as ev:
        device.fill_kernel._cuda_launch = None  # build it inside the block
        device.fill_kernel(out, 1.0)
        ev_host = ev.host_arguments
    assert ev_host == 0
    launch = device.fill_kernel._cuda_launch
    with count_device_events() as ev:
        launch(np.zeros(4, np.float32), 1.0)
    assert ev.host_arguments == 1 and ev.copies == 2
    with count_device_events(strict=True):
        with pytest.raises(HostArrayError, match=r"'fill' got NumPy array\(s\) of shape \(4,\)"):
            launch(np.zeros(4, np.float32), 1.0)


def test_counters_do_not_nest():
    with count_device_events():
        with pytest.raises(RuntimeError, match="do not nest"):
            with count_device_events():
                pass


def _digits_step():
    mc.manual_seed(0)
    model = DigitsCNN(width=4, attention="cbam").to("cuda")
    opt = Adam(model.parameters(), lr=1e-3)
    x = mc.randn(4, 1, 8, 8).to("cuda")
    y = mc.tensor(np.array([1, 2, 3, 4])).to("cuda")

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def test_digits_train_step_copies_nothing_and_allocates_nothing_after_warm_up():
    step = _digits_step()
    step()  # warm-up: kernels built, optimizer state allocated
    step()  # the pool now holds a block for every buffer a step needs at once
    with count_device_events(strict=True) as ev:
        step()
    assert ev.launches > 50  # the step really ran on the device
    assert (ev.host_to_device, ev.device_to_host, ev.host_arguments) == (0, 0, 0)
    assert ev.error_reads == 0  # the label check's result is not read inside the step
    assert ev.driver_allocations == 0 and ev.driver_bytes == 0
    assert ev.pool_hits == ev.allocations > 50  # every buffer came from the pool
