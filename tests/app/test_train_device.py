"""run_epoch on "cuda" (the simulator): metrics stay on the device and are read once per
epoch, and give what the CPU run gives."""

import numpy as np
import pytest

import minicbam as mc
from minicbam.app import train
from minicbam.app.train import run_epoch
from minicbam.data import DataLoader, TensorDataset
from minicbam.device_events import count_device_events
from minicbam.models.digits import DigitsCNN
from minicbam.optim import SGD

pytestmark = pytest.mark.cuda


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


def _model(dev):
    mc.manual_seed(0)
    return DigitsCNN(width=4, attention="cbam").to(dev)


@pytest.mark.parametrize("training", [True, False])
def test_cuda_epoch_reads_the_device_once_and_matches_cpu(training):
    results = {}
    for dev in ("cpu", "cuda"):
        model = _model(dev)
        opt = SGD(model.parameters(), lr=0.1) if training else None
        with count_device_events() as ev:
            results[dev] = run_epoch(model, _data(), dev, optimizer=opt)
        if dev == "cuda":
            # 3 batches, each x and y sent once; the loss sum, the correct count and the
            # predictions read back once at the end of the epoch
            assert (ev.host_to_device, ev.device_to_host) == (6, 3)
    (loss_c, acc_c, pred_c), (loss_g, acc_g, pred_g) = results["cpu"], results["cuda"]
    assert isinstance(loss_g, float) and isinstance(acc_g, float)
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    assert acc_g == acc_c
    np.testing.assert_array_equal(pred_g, pred_c)
    assert pred_g.shape == (10,)


def test_progress_reads_every_k_steps(monkeypatch):
    monkeypatch.setattr(train, "PROGRESS_EVERY", 2)
    postfix = []

    class Bar:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            return iter(self.loader)

        def set_postfix(self, **kwargs):
            postfix.append(kwargs)

    monkeypatch.setattr(train, "_progress_bar", lambda loader, desc, enabled: Bar(loader))
    model = _model("cuda")
    with count_device_events() as ev:
        run_epoch(model, _data(), "cuda", progress=True)
    assert ev.device_to_host == 3 + 2  # one progress read (after step 2) plus the epoch's
    assert len(postfix) == 1 and set(postfix[0]) == {"loss", "acc"}
