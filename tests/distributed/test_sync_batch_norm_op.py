"""sync_batch_norm in one process (the group of one rank): forward, running statistics and
gradients equal batch_norm's in training mode, float64 finite differences on hypothesis
shapes, CUDA parity, bad input. The statistics over several ranks are checked under
mpiexec (test_mpi.py) and, without MPI, by replaying ranks of unequal sizes in one process
(test_ranks_equal_batch_norm_of_the_whole_batch)."""

import itertools

import numpy as np
import pytest
from helpers import assert_cuda_parity, assert_gradcheck, leaf
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.batch_norm import batch_norm
from minicbam.ops.sync_batch_norm import SINGLE_PROCESS, sync_batch_norm

seeds = st.integers(0, 2**16)


@st.composite
def bn_shapes(draw):
    """(N, C), (N, C, L) or (N, C, H, W) with more than one value per channel."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (3,), (1, 1), (2, 3)]))
    shape = (n, c) + spatial
    if int(np.prod(shape)) // c == 1:
        shape = (n + 1,) + shape[1:]
    return shape


def bn_arrays(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.7
    return (
        x,
        rng.standard_normal(C),
        rng.standard_normal(C),
        rng.standard_normal(C),
        (rng.uniform(0.5, 2.0, C)),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=bn_shapes(), momentum=st.sampled_from([0.1, 1.0]), seed=seeds)
def test_single_process_equals_batch_norm(dtype, shape, momentum, seed):
    x, w, b, rm, rv = (a.astype(dtype) for a in bn_arrays(shape, seed))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    results = []
    for fn in (batch_norm, sync_batch_norm):
        xs, ws, bs = leaf(x), leaf(w), leaf(b)
        stats = mc.tensor(rm), mc.tensor(rv)
        if fn is batch_norm:
            y = fn(xs, *stats, ws, bs, True, momentum, 1e-5)
        else:
            y = fn(xs, *stats, ws, bs, momentum, 1e-5, SINGLE_PROCESS)
        cot = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
        (y * mc.tensor(cot)).sum().backward()
        results.append(
            [y.numpy(), stats[0].numpy(), stats[1].numpy()] + [t.grad.numpy() for t in (xs, ws, bs)]
        )
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, **tol)


@given(shape=bn_shapes(), affine=st.booleans(), seed=seeds)
def test_gradcheck(shape, affine, seed):
    x, w, b, _, _ = bn_arrays(shape, seed)
    if affine:
        assert_gradcheck(lambda x, w, b: sync_batch_norm(x, None, None, w, b), x, w, b)
    else:
        assert_gradcheck(lambda x: sync_batch_norm(x, None, None), x)


class _ReplayGroup:
    """Rank ``rank`` of ``size`` ranks run one after another in this process. A collective
    returns the combination of every rank's contribution from the previous round (its own
    repeated while none is known) and records this round's; once each rank's inputs stop
    changing, two more rounds give what a real group gives."""

    def __init__(self, rank, size, book):
        self.rank, self.size, self.book = rank, size, book

    def _collective(self, kind, array):
        self.book["now"].setdefault(kind, {})[self.rank] = np.array(array, dtype=np.float64)
        known = self.book["before"].get(kind, {})
        parts = [known.get(r, np.array(array, dtype=np.float64)) for r in range(self.size)]
        return np.stack(parts)

    def allgather_array(self, array):
        return self._collective("gather", array)

    def allreduce_array(self, array):
        return self._collective("reduce", array).sum(axis=0)


@given(
    sizes=st.lists(st.integers(1, 3), min_size=2, max_size=3),
    spatial=st.sampled_from([(), (2,), (2, 3)]),
    momentum=st.sampled_from([0.1, 1.0]),
    seed=seeds,
)
def test_ranks_equal_batch_norm_of_the_whole_batch(sizes, spatial, momentum, seed):
    # ranks of unequal sizes: the global mean is weighted by K_r, M2 gets the between-rank
    # term, the backward's sums are reduced over the ranks; w and b get local sums
    C = 2
    x, w, b, rm, rv = bn_arrays((sum(sizes), C) + spatial, seed)
    cot = np.random.default_rng(seed + 1).standard_normal(x.shape)
    bounds = np.cumsum([0] + sizes)
    xs, ws, bs = leaf(x), leaf(w), leaf(b)
    stats = mc.tensor(rm), mc.tensor(rv)
    y = batch_norm(xs, *stats, ws, bs, True, momentum, 1e-5)
    (y * mc.tensor(cot)).sum().backward()
    book = {"before": {}, "now": {}}
    for _ in range(3):  # gathers known after round 1, reductions after round 2
        ranks = []
        for r, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            xr, wr, br = leaf(x[lo:hi]), leaf(w), leaf(b)
            stats_r = mc.tensor(rm), mc.tensor(rv)
            group = _ReplayGroup(r, len(sizes), book)
            yr = sync_batch_norm(xr, *stats_r, wr, br, momentum, 1e-5, group)
            (yr * mc.tensor(cot[lo:hi])).sum().backward()
            ranks.append((yr, stats_r, xr, wr, br))
        book = {"before": book["now"], "now": {}}
    tol = {"rtol": 1e-10, "atol": 1e-12}
    for (yr, stats_r, xr, _, _), (lo, hi) in zip(ranks, itertools.pairwise(bounds)):
        np.testing.assert_allclose(yr.numpy(), y.numpy()[lo:hi], **tol)
        np.testing.assert_allclose(xr.grad.numpy(), xs.grad.numpy()[lo:hi], **tol)
        for got, want in zip(stats_r, stats):
            np.testing.assert_allclose(got.numpy(), want.numpy(), **tol)
    for k, t in ((3, ws), (4, bs)):  # DDP sums (then averages) the ranks' local gradients
        np.testing.assert_allclose(sum(r[k].grad.numpy() for r in ranks), t.grad.numpy(), **tol)


@pytest.mark.cuda
def test_cuda_parity():
    x, w, b, _, _ = bn_arrays((3, 2, 2, 2), 0)
    assert_cuda_parity(lambda x, w, b: sync_batch_norm(x, None, None, w, b), x, w, b)
    stats = {}
    for dev in ("cpu", "cuda"):
        rm, rv = mc.tensor(np.zeros(2), device=dev), mc.tensor(np.ones(2), device=dev)
        sync_batch_norm(mc.tensor(x, device=dev), rm, rv, momentum=0.3)
        stats[dev] = rm.numpy(), rv.numpy()
    for cpu, gpu in zip(stats["cpu"], stats["cuda"]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-12)


def test_errors():
    x = mc.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sync_batch_norm(mc.tensor(np.ones((1, 3))), None, None)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        sync_batch_norm(mc.tensor(np.ones(3)), None, None)
    with pytest.raises(ValueError, match="weight should contain 3 elements"):
        sync_batch_norm(x, None, None, mc.tensor(np.ones(2)))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        sync_batch_norm(x, mc.tensor(np.zeros(3)), None)
    with pytest.raises(TypeError, match="floating-point"):
        sync_batch_norm(mc.tensor(np.ones((2, 3), dtype=np.int64)), None, None)
