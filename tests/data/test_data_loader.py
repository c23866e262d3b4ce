"""Dataset wrappers and the DataLoader: batching, lengths, collation, seeded epochs."""

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicbam.data import (
    DataLoader,
    Dataset,
    Subset,
    TensorDataset,
    default_collate,
    numpy_collate,
    random_split,
)


def index_dataset(n):
    # Sample i is (i, i as a float feature vector): batches reveal which indices they hold.
    return TensorDataset(np.arange(n), np.arange(n, dtype=np.float32)[:, None].repeat(3, 1))


def loader(n, **kwargs):
    return DataLoader(index_dataset(n), collate_fn=numpy_collate, **kwargs)


def epoch_order(dl):
    return np.concatenate([idx for idx, _ in dl])


# ------------------------------------------------------------------------- datasets


def test_tensor_dataset_samples_and_errors():
    x, y = np.arange(12.0).reshape(4, 3), np.array([3, 1, 4, 1])
    ds = TensorDataset(x, y)
    assert len(ds) == 4
    sample = ds[2]
    np.testing.assert_array_equal(sample[0], x[2])
    assert sample[1] == 4 and ds[-1][1] == 1
    with pytest.raises(IndexError, match="index 4 out of range for length 4"):
        ds[4]
    with pytest.raises(ValueError, match=r"differ in their first dimension: \[4, 3\]"):
        TensorDataset(x, y[:3])
    with pytest.raises(ValueError, match="at least one array"):
        TensorDataset()
    with pytest.raises(ValueError, match="scalar"):
        TensorDataset(np.float32(1.0))


def test_tensor_dataset_accepts_objects_with_numpy():
    class FakeTensor:
        def __init__(self, a):
            self.a = a

        def numpy(self):
            return self.a

    ds = TensorDataset(FakeTensor(np.array([5, 6])))
    assert ds[1] == (6,)


def test_abstract_dataset_says_what_is_missing():
    with pytest.raises(NotImplementedError, match="Dataset must implement __len__"):
        len(Dataset())


def test_subset_and_random_split():
    ds = index_dataset(10)
    sub = Subset(ds, [7, 2, -1])
    assert [int(sub[i][0]) for i in range(3)] == [7, 2, 9]
    with pytest.raises(IndexError, match="Subset index 10 out of range"):
        Subset(ds, [10])
    parts = random_split(ds, [6, 3, 1], seed=5)
    seen = [int(p[i][0]) for p in parts for i in range(len(p))]
    assert [len(p) for p in parts] == [6, 3, 1] and sorted(seen) == list(range(10))
    again = random_split(ds, [6, 3, 1], seed=5)
    assert [p.indices for p in parts] == [p.indices for p in again]
    assert parts[0].indices != random_split(ds, [6, 3, 1], seed=6)[0].indices


def test_random_split_fractions_and_errors():
    parts = random_split(index_dataset(11), [0.5, 0.3, 0.2], seed=0)
    # floor gives 5, 3, 2; the remainder 1 goes round-robin to the first part (PyTorch).
    assert [len(p) for p in parts] == [6, 3, 2]
    with pytest.raises(ValueError, match="sum to 11"):
        random_split(index_dataset(11), [5, 5])
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(index_dataset(11), [0.5, 0.4])


# ---------------------------------------------------------------------- DataLoader


@pytest.mark.parametrize(
    "n, bs, drop_last, expected",
    [
        (10, 3, False, 4),
        (10, 3, True, 3),
        (9, 3, True, 3),
        (9, 3, False, 3),
        (2, 5, True, 0),
    ],
)
def test_len(n, bs, drop_last, expected):
    dl = loader(n, batch_size=bs, drop_last=drop_last)
    assert len(dl) == expected and len(list(dl)) == expected


def test_sequential_batches_and_collated_types():
    batches = list(loader(7, batch_size=3))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    idx, feats = batches[0]
    assert idx.dtype == np.int64 and feats.shape == (3, 3) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[:, 0], [0, 1, 2])


def test_drop_last_drops_only_the_short_batch():
    assert [len(b[0]) for b in loader(7, batch_size=3, drop_last=True)] == [3, 3]


def test_same_seed_same_order_and_epochs_differ():
    a, b = (
        loader(50, batch_size=8, shuffle=True, seed=3),
        loader(50, batch_size=8, shuffle=True, seed=3),
    )
    first, second = epoch_order(a), epoch_order(a)
    np.testing.assert_array_equal(first, epoch_order(b))
    np.testing.assert_array_equal(second, epoch_order(b))
    assert not np.array_equal(first, second)
    assert sorted(first) == list(range(50))
    assert not np.array_equal(first, epoch_order(loader(50, batch_size=8, shuffle=True, seed=4)))


def test_seed_none_follows_manual_seed():
    mc = importlib.import_module("minicbam")
    mc.manual_seed(123)
    a = epoch_order(loader(40, batch_size=8, shuffle=True))
    mc.manual_seed(123)
    np.testing.assert_array_equal(a, epoch_order(loader(40, batch_size=8, shuffle=True)))
    assert not np.array_equal(a, epoch_order(loader(40, batch_size=8, shuffle=True)))


def test_set_epoch_resumes_an_uninterrupted_run():
    full = loader(30, batch_size=4, shuffle=True, seed=11)
    orders = [epoch_order(full) for _ in range(4)]
    resumed = loader(30, batch_size=4, shuffle=True, seed=11)
    resumed.set_epoch(2)
    np.testing.assert_array_equal(epoch_order(resumed), orders[2])
    np.testing.assert_array_equal(epoch_order(resumed), orders[3])  # and keeps advancing
    np.testing.assert_array_equal(resumed.order(1), orders[1])


def test_epoch_is_claimed_by_iter_not_by_first_next():
    dl = loader(20, batch_size=20, shuffle=True, seed=0)
    it0, it1 = iter(dl), iter(dl)
    np.testing.assert_array_equal(next(it1)[0], dl.order(1))
    np.testing.assert_array_equal(next(it0)[0], dl.order(0))


def test_unshuffled_order_ignores_epoch():
    dl = loader(5, batch_size=2)
    assert epoch_order(dl).tolist() == epoch_order(dl).tolist() == [0, 1, 2, 3, 4]


def test_loader_passes_epoch_to_dataset():
    class Recorder(Dataset):
        epochs = []

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.float32(i)

        def set_epoch(self, e):
            self.epochs.append(e)

    dl = DataLoader(Subset(Recorder(), [0, 2]), batch_size=2, collate_fn=numpy_collate)
    dl.set_epoch(5)
    batches = [b.tolist() for b in dl] + [b.tolist() for b in dl]
    assert batches == [[0.0, 2.0], [0.0, 2.0]]
    assert Recorder.epochs == [5, 6]


def test_collate_structures_and_errors():
    out = numpy_collate([{"x": np.zeros(2), "y": 1}, {"x": np.ones(2), "y": 2}])
    assert out["x"].shape == (2, 2) and out["y"].dtype == np.int64
    single = numpy_collate([np.zeros((2, 2), np.float32)] * 3)
    assert single.shape == (3, 2, 2) and single.dtype == np.float32
    with pytest.raises(ValueError, match=r"differ in shape at field 0: \[\(2,\), \(3,\)\]"):
        numpy_collate([(np.zeros(2),), (np.zeros(3),)])
    with pytest.raises(ValueError, match="different numbers of fields"):
        numpy_collate([(1, 2), (1,)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": -2}, "batch_size must be a positive int"),
        ({"batch_size": 2.0}, "batch_size must be a positive int"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(index_dataset(4), **kwargs)


def test_empty_dataset_and_bad_epoch():
    with pytest.raises(ValueError, match="dataset TensorDataset is empty"):
        DataLoader(TensorDataset(np.zeros((0, 2))))
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        loader(3).set_epoch(-1)


def test_default_collate_hands_each_field_to_minicbam_tensor(monkeypatch):
    mc = importlib.import_module("minicbam")
    calls = []
    monkeypatch.setattr(mc, "tensor", lambda a: calls.append(a) or ("T", a.dtype), raising=False)
    x, y = next(iter(DataLoader(index_dataset(5), batch_size=4)))
    assert x == ("T", np.int64) and y == ("T", np.float32)
    np.testing.assert_array_equal(calls[1][:, 0], [0, 1, 2, 3])
    assert DataLoader(index_dataset(2), collate_fn=None).collate_fn is default_collate


def test_default_collate_makes_real_minicbam_tensors():
    mc = importlib.import_module("minicbam")
    if not hasattr(mc, "tensor"):
        pytest.skip("the engine's minicbam.tensor has not landed yet")
    x, y = next(iter(DataLoader(index_dataset(5), batch_size=4)))
    assert x.shape == (4,) and str(x.dtype).endswith("int64")
    assert y.shape == (4, 3) and str(y.dtype).endswith("float32")
    np.testing.assert_array_equal(y.numpy()[:, 0], [0, 1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    bs=st.integers(1, 70),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_index_once_per_epoch(n, bs, shuffle, drop_last, seed):
    dl = loader(n, batch_size=bs, shuffle=shuffle, drop_last=drop_last, seed=seed)
    for _ in range(2):
        batches = [idx for idx, _ in dl]
        assert len(batches) == len(dl)
        assert all(len(b) == bs for b in batches[:-1]) and all(len(b) <= bs for b in batches)
        seen = np.concatenate(batches) if batches else np.array([], np.int64)
        assert len(set(seen.tolist())) == len(seen)  # no index twice
        if drop_last:
            assert len(seen) == (n // bs) * bs
        else:
            assert sorted(seen.tolist()) == list(range(n))
