"""DistributedSampler: every index exactly once per epoch over the ranks (plus the padding
PyTorch adds when the ranks do not divide the dataset), the same order as the DataLoader's
shuffle, reshuffled by set_epoch, and the DataLoader driving it."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam.data import DataLoader, DistributedSampler, TensorDataset


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def _shares(n, replicas, epoch=0, **kwargs):
    out = []
    for r in range(replicas):
        s = DistributedSampler(_Sized(n), num_replicas=replicas, rank=r, **kwargs)
        s.set_epoch(epoch)
        out.append(list(s))
        assert len(out[-1]) == len(s)
    return out


@given(
    n=st.integers(1, 60),
    replicas=st.integers(1, 7),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**16),
    epoch=st.integers(0, 5),
)
def test_every_index_once_per_epoch(n, replicas, shuffle, drop_last, seed, epoch):
    shares = _shares(n, replicas, epoch, shuffle=shuffle, drop_last=drop_last, seed=seed)
    sizes = {len(s) for s in shares}
    assert len(sizes) == 1  # equal shares: every rank runs the same number of batches
    counts = np.bincount(np.concatenate(shares).astype(np.int64), minlength=n)
    if drop_last:
        assert sizes == {n // replicas}
        assert counts.max(initial=0) <= 1 and counts.sum() == n - n % replicas
    else:
        size = -(-n // replicas)
        assert sizes == {size}
        assert counts.min() >= 1  # everything seen; the padding repeats a few indices
        assert counts.sum() == size * replicas
        assert np.sum(counts - 1) == size * replicas - n


@given(n=st.integers(2, 60), replicas=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_same_global_order_as_the_dataloader(n, replicas, seed):
    shares = _shares(n, replicas, epoch=3, seed=seed)
    interleaved = np.empty(len(shares[0]) * replicas, np.int64)
    for r, share in enumerate(shares):
        interleaved[r::replicas] = share
    order = DataLoader(_Sized(n), shuffle=True, seed=seed).order(3)
    # PyTorch pads by repeating the start of the epoch's order (indices[: total - n]).
    np.testing.assert_array_equal(interleaved, np.resize(order, len(interleaved)))


def test_set_epoch_reshuffles():
    a, b = _shares(50, 2, epoch=0), _shares(50, 2, epoch=1)
    assert a != b
    assert a == _shares(50, 2, epoch=0)
    assert _shares(10, 2, shuffle=False) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_dataloader_uses_the_sampler_per_epoch():
    data = TensorDataset(mc.tensor(np.arange(10.0)))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, seed=4)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    loader.set_epoch(2)
    got = np.concatenate([batch[0].numpy() for batch in loader]).astype(int).tolist()
    sampler.set_epoch(2)
    assert got == list(sampler)
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(data, sampler=sampler, shuffle=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\]"):
        DistributedSampler(_Sized(4), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be an int >= 1"):
        DistributedSampler(_Sized(4), num_replicas=0, rank=0)
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedSampler(_Sized(4))
