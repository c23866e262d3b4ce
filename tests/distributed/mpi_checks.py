"""The checks that need several processes, run by test_mpi.py as
``mpiexec -n 2 python mpi_checks.py cpu OUT.json`` (``cuda OUT.json``: the CUDA check;
``kill`` / ``raise``: the failure drills).

Every rank runs every check; rank 0 writes {check: "ok" | error text} to OUT.json. A check
compares the distributed result with one process computing the same thing on the whole
batch (every rank computes that reference itself, so it needs no communication).
"""

import copy
import json
import os
import signal
import sys
import time
import traceback

import numpy as np

import minicbam as mc
import minicbam.distributed as dist
import minicbam.nn.functional as F
from minicbam import nn, optim
from minicbam.models import DigitsCNN
from minicbam.nn.parallel import DistributedDataParallel

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _model(seed=0):
    mc.manual_seed(seed)
    model = DigitsCNN(num_classes=3, attention="cbam", width=8).to(mc.float64)
    for m in model.modules():  # non-trivial BN affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = np.random.default_rng(seed).uniform(0.5, 1.5, m.num_features)
    return model


def _data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)) + 0.3
    y = rng.integers(0, 3, n)
    return x, y


def _shard(array, rank, world):
    per = len(array) // world
    return array[rank * per : (rank + 1) * per]


def _train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(mc.tensor(x)), mc.tensor(y))
        loss.backward()
        optimizer.step()


def _state(model):
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def _assert_states_close(got, want, **tol):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **tol)


def check_ddp_syncbn_equals_one_process(rank, world):
    """2 ranks x 16 samples with SyncBatchNorm == one process on the 32 samples."""
    x, y = _data(16 * world)
    for make_opt in (
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: optim.Adam(p, lr=1e-2),
    ):
        single = _model()
        _train(single, make_opt(single.parameters()), x, y, steps=4)
        local = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
        names = [n for n, m in local.named_modules() if isinstance(m, nn.SyncBatchNorm)]
        assert any(".spatial." in n for n in names), names  # CBAM's spatial-attention BN
        assert not any(type(m) is nn.BatchNorm2d for m in local.modules())
        ddp = DistributedDataParallel(local)
        _train(ddp, make_opt(ddp.parameters()), _shard(x, rank, world), _shard(y, rank, world), 4)
        _assert_states_close(_state(local), _state(single), **TIGHT)


def _local_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(mc.tensor(x)), mc.tensor(y)).backward()
    return [p.grad.numpy() for p in model.parameters()]


def check_grads_are_rank_mean(rank, world):
    """Without SyncBatchNorm every gradient is the mean of the ranks' local gradients."""
    x, y = _data(8 * world, seed=rank + 5)  # different data on every rank
    reference = _model()
    mine = _local_grads(reference, x, y)
    ddp = DistributedDataParallel(_model())
    ddp.zero_grad()
    F.cross_entropy(ddp(mc.tensor(x)), mc.tensor(y)).backward()
    for p, g in zip(ddp.parameters(), mine):
        everyone = [mc.zeros_like(p) for _ in range(world)]
        dist.all_gather(everyone, mc.tensor(g))
        mean = sum(t.numpy() for t in everyone) / world
        np.testing.assert_allclose(p.grad.numpy(), mean, rtol=1e-14, atol=1e-15)
        assert not np.allclose(g, mean)  # the ranks really differ: the check can fail


def check_buckets_bit_identical_to_plain_allreduce(rank, world):
    x, y = _data(8, seed=rank + 11)
    plain = _model()
    grads = _local_grads(plain, x, y)
    want = []
    for g in grads:
        t = mc.tensor(g)
        dist.all_reduce(t)
        want.append(t.numpy() / world)
    for cap_mb in (25, 1e-6, 2e-3):  # one bucket; one per parameter; a few parameters each
        ddp = DistributedDataParallel(_model(), bucket_cap_mb=cap_mb)
        if cap_mb == 1e-6:
            assert len(ddp._buckets) == len(list(ddp.parameters()))
        ddp.zero_grad()
        F.cross_entropy(ddp(mc.tensor(x)), mc.tensor(y)).backward()
        for p, w in zip(ddp.parameters(), want):
            assert np.array_equal(p.grad.numpy(), w), f"bucket_cap_mb={cap_mb}"


class _Branchy(nn.Module):
    """``shared`` always used; ``rank0_only`` used by rank 0 only; ``never`` by no rank."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 2).to(mc.float64)
        self.rank0_only = nn.Linear(2, 2).to(mc.float64)
        self.never = nn.Linear(2, 2).to(mc.float64)

    def forward(self, x, use_branch):
        h = self.shared(x)
        return self.rank0_only(h) if use_branch else h


def check_unused_parameters(rank, world):
    mc.manual_seed(3)
    model = _Branchy()
    ddp = DistributedDataParallel(model, bucket_cap_mb=1e-4)
    x = mc.tensor(np.random.default_rng(rank).standard_normal((4, 3)))
    for _ in range(2):  # a second iteration: nothing left over from the first
        ddp.zero_grad()
        (ddp(x, use_branch=rank == 0) ** 2).sum().backward()
    branch = model.rank0_only.weight.grad.numpy()
    gathered = [mc.zeros_like(model.rank0_only.weight) for _ in range(world)]
    dist.all_gather(gathered, mc.tensor(branch))
    np.testing.assert_array_equal(gathered[1].numpy(), gathered[0].numpy())
    assert np.abs(branch).max() > 0
    assert model.never.weight.grad is None and model.never.bias.grad is None


def check_no_sync_accumulates(rank, world):
    x, y = _data(8, seed=rank + 21)
    reference = _model()
    reference.zero_grad()
    for part in (slice(0, 4), slice(4, 8)):
        F.cross_entropy(reference(mc.tensor(x[part])), mc.tensor(y[part])).backward()
    local = [p.grad.numpy() for p in reference.parameters()]
    ddp = DistributedDataParallel(_model())
    ddp.zero_grad()
    with ddp.no_sync():
        F.cross_entropy(ddp(mc.tensor(x[:4])), mc.tensor(y[:4])).backward()
    after_no_sync = [p.grad.numpy() for p in ddp.parameters()]
    for a, b in zip(after_no_sync, local):
        assert not np.allclose(a, b)  # only the first micro-batch, not reduced
    F.cross_entropy(ddp(mc.tensor(x[4:])), mc.tensor(y[4:])).backward()
    for p, g in zip(ddp.parameters(), local):
        t = mc.tensor(g)
        dist.all_reduce(t)
        np.testing.assert_allclose(p.grad.numpy(), t.numpy() / world, rtol=1e-13, atol=1e-15)


def check_sync_batch_norm_uneven_shards(rank, world):
    """Forward, running statistics and gradients with 3 + 5 samples == BN on all 8."""
    rng = np.random.default_rng(7)
    sizes = [3 + 2 * r for r in range(world)]
    x_all = rng.standard_normal((sum(sizes), 4, 3, 2)) * 2 + 1
    cot_all = rng.standard_normal(x_all.shape)
    lo = sum(sizes[:rank])
    part = slice(lo, lo + sizes[rank])

    def run(module, x, cot):
        xt = mc.tensor(x, requires_grad=True)
        y = module(xt)
        (y * mc.tensor(cot)).sum().backward()
        return y.numpy(), xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()

    bn = nn.BatchNorm2d(4, momentum=0.3).to(mc.float64)
    bn.weight.data[...] = [0.5, 1.0, 1.5, 2.0]
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(bn))
    y, gx, gw, gb = run(bn, x_all, cot_all)
    ys, gxs, gws, gbs = run(sync, x_all[part], cot_all[part])
    np.testing.assert_allclose(ys, y[part], **TIGHT)
    np.testing.assert_allclose(gxs, gx[part], **TIGHT)
    for local, total in ((gws, gw), (gbs, gb)):  # w and b: local sums that add up
        t = mc.tensor(local)
        dist.all_reduce(t)
        np.testing.assert_allclose(t.numpy(), total, **TIGHT)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(sync, name).numpy(), getattr(bn, name).numpy(), **TIGHT)


def check_collectives(rank, world):
    t = mc.tensor(np.array([rank + 1.0, -rank]))
    dist.all_reduce(t)
    np.testing.assert_array_equal(t.numpy(), [world * (world + 1) / 2, -world * (world - 1) / 2])
    t = mc.tensor(np.array([rank + 1.0]))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    assert t.item() == world
    t = mc.tensor(np.array([rank + 1.0]))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    assert t.item() == (world + 1) / 2
    t = mc.tensor(np.full(3, rank, dtype=np.int64))
    dist.broadcast(t, src=world - 1)
    np.testing.assert_array_equal(t.numpy(), [world - 1] * 3)
    out = [mc.zeros(2) for _ in range(world)]
    dist.all_gather(out, mc.tensor([rank, 10.0 * rank]))
    for r, o in enumerate(out):
        np.testing.assert_array_equal(o.numpy(), np.array([r, 10.0 * r], np.float32))
    dist.barrier()
    assert dist.get_rank() == rank and dist.get_world_size() == world


def check_construction_broadcasts_rank0(rank, world):
    model = _model(seed=rank)  # different initialisations on purpose
    DistributedDataParallel(model)
    mine = np.concatenate([np.asarray(v, np.float64).ravel() for v in model.state_dict().values()])
    rank0 = mc.tensor(mine)
    dist.broadcast(rank0, src=0)
    np.testing.assert_array_equal(mine, rank0.numpy())


def check_cuda_tensors(rank, world):
    """DDP and SyncBatchNorm with CUDA tensors (through host memory) == the same on the CPU.
    Run with NUMBA_ENABLE_CUDASIM=1 where there is no GPU: tiny shapes."""
    rng = np.random.default_rng(rank)
    x, cot = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 3))
    results = {}
    for dev in ("cpu", "cuda"):
        mc.manual_seed(5)
        layers = [nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3), nn.Linear(3, 3)]
        model = nn.Sequential(*layers).to(mc.float64)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(dev)
        ddp = DistributedDataParallel(model, bucket_cap_mb=1e-4)
        (ddp(mc.tensor(x, device=dev)) * mc.tensor(cot, device=dev)).sum().backward()
        t = mc.tensor(np.array([rank + 1.0]), device=dev)
        dist.all_reduce(t)
        results[dev] = [p.grad.numpy() for p in model.parameters()]
        results[dev] += [model[0].running_var.numpy(), t.numpy()]
        assert all(p.grad.device == dev for p in model.parameters())
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


CHECKS = [
    check_collectives,
    check_construction_broadcasts_rank0,
    check_grads_are_rank_mean,
    check_buckets_bit_identical_to_plain_allreduce,
    check_unused_parameters,
    check_no_sync_accumulates,
    check_sync_batch_norm_uneven_shards,
    check_ddp_syncbn_equals_one_process,
]


def run_checks(out_path, checks):
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for check in checks:
        try:
            check(rank, world)
            status = "ok"
        except Exception:  # noqa: BLE001 (reported per check; the ranks stay in step)
            status = traceback.format_exc()
        statuses = dist.default_group().comm.allgather(status)
        bad = [f"rank {r}: {s}" for r, s in enumerate(statuses) if s != "ok"]
        results[check.__name__] = "ok" if not bad else "\n".join(bad)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)


def main():
    dist.init_process_group(backend="mpi")
    mode = sys.argv[1]
    if mode == "kill":  # rank 1 dies without a word while rank 0 waits in a collective
        if dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5)
        dist.all_reduce(mc.tensor([1.0]))
        print("rank 0 passed the allreduce", flush=True)  # never reached
        return
    if mode == "raise":  # rank 1 raises; abort_on_error stops rank 0 waiting in a barrier
        with dist.abort_on_error("mpi_checks"):
            if dist.get_rank() == 1:
                raise ValueError("a deliberate failure")
            dist.barrier()
        return
    run_checks(sys.argv[2], [check_cuda_tensors] if mode == "cuda" else CHECKS)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
