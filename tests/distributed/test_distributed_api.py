"""One process, no MPI needed: the errors of minicbam.distributed and DDP before a group
exists, the launcher detection, SyncBatchNorm's single-process path (plain BatchNorm) and
convert_sync_batchnorm (reaches CBAM's spatial BN, shares the tensors, keeps the keys)."""

import numpy as np
import pytest
from helpers import randomize_

import minicbam as mc
import minicbam.distributed as dist
from minicbam import nn
from minicbam.models import DigitsCNN
from minicbam.nn.parallel import DistributedDataParallel


def test_errors_without_a_group():
    assert not dist.is_initialized()
    for call in (dist.get_rank, dist.get_world_size, dist.barrier):
        with pytest.raises(RuntimeError, match="not initialised; call .*init_process_group"):
            call()
    with pytest.raises(RuntimeError, match="not initialised"):
        dist.all_reduce(mc.zeros(2))
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="only backend='mpi'"):
        dist.init_process_group(backend="nccl")
    with pytest.raises(TypeError, match="expected a minicbam Tensor, got ndarray"):
        dist.all_reduce(np.zeros(2))
    with pytest.raises(TypeError, match="expected a minicbam Module, got builtin_function"):
        DistributedDataParallel(print)


def test_launcher_detection():
    assert dist.launched_world_size({}) == 1
    assert dist.launched_world_size({"PMI_SIZE": "4", "PMI_RANK": "1"}) == 4
    assert dist.launched_world_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8
    assert dist.launched_world_size({"PMI_SIZE": ""}) == 1


def test_convert_reaches_every_batchnorm_and_shares_tensors():
    mc.manual_seed(0)
    model = randomize_(DigitsCNN(num_classes=3, attention="cbam", width=8), seed=1)
    before = dict(model.named_modules())
    bns = {n: m for n, m in before.items() if isinstance(m, nn.BatchNorm2d)}
    assert any(".spatial." in n for n in bns)  # CBAM's spatial-attention BN is one of them
    keys = list(model.state_dict())
    model.eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and list(model.state_dict()) == keys
    after = dict(model.named_modules())
    for name, bn in bns.items():
        sync = after[name]
        assert type(sync) is nn.SyncBatchNorm and not sync.training
        for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert getattr(sync, attr) is getattr(bn, attr), (name, attr)
        assert (sync.eps, sync.momentum) == (bn.eps, bn.momentum)
    alone = nn.BatchNorm1d(3)
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(alone)) is nn.SyncBatchNorm


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (2, 3, 2, 2)])
def test_single_process_is_batchnorm(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    outs = []
    for cls in (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d, nn.SyncBatchNorm):
        bn = cls(3, momentum=None).to(mc.float64)
        xt = mc.tensor(x, requires_grad=True)
        for _ in range(2):
            y = bn(xt)
        (y * y).sum().backward()
        bn.eval()
        outs.append([y.numpy(), xt.grad.numpy(), bn.running_var.numpy(), bn(xt).numpy()])
    for got, want in zip(outs[1], outs[0]):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="at least 2D input"):
        nn.SyncBatchNorm(3)(mc.zeros(3))
