"""scikit-learn's digits: shapes, dtypes, scaling, and the fixed stratified split."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from minicbam.data import Digits, load_digits
from minicbam.data.datasets import stratified_split


@pytest.fixture(scope="module")
def sk():
    return sk_load_digits()


def test_split_sizes_and_types():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797
    assert len(test) == sum(round(c * 0.2) for c in np.bincount(sk_load_digits().target))
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    assert y.dtype == np.int64 and 0 <= y < 10


def test_split_is_disjoint_and_covers_everything():
    train, test = Digits("train"), Digits("test")
    assert not set(train.indices) & set(test.indices)
    assert sorted(np.concatenate([train.indices, test.indices])) == list(range(1797))


def test_pixels_are_sklearn_values_over_16(sk):
    test = load_digits("test")
    for i in (0, 17, len(test) - 1):
        x, y = test[i]
        source = test.indices[i]
        np.testing.assert_array_equal(x.reshape(64), (sk.data[source] / 16).astype(np.float32))
        assert y == sk.target[source]
    all_pixels = np.concatenate([load_digits(s).data.ravel() for s in ("train", "test")])
    assert all_pixels.max() == 16  # so [0, 1] is reached exactly


def test_split_is_stratified(sk):
    counts = np.bincount(sk.target)
    test_counts = np.bincount(load_digits("test", test_fraction=0.3).targets, minlength=10)
    np.testing.assert_array_equal(test_counts, np.round(counts * 0.3).astype(int))


def test_split_is_deterministic_and_seed_dependent():
    a, b = Digits("test", split_seed=0), Digits("test", split_seed=0)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, load_digits("test", seed=1).indices)


def test_stratified_split_small_example():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    train, test = stratified_split(labels, 0.5, seed=3)
    assert np.bincount(labels[test]).tolist() == [2, 3]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "val"}, "split must be 'train' or 'test'"),
        ({"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
        ({"test_fraction": 1.5}, r"test_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits(**kwargs)


def test_the_bundled_csv_read_directly_equals_sklearns_loader(sk, monkeypatch):
    from minicbam.data import datasets

    datasets._sklearn_digits.cache_clear()
    direct = datasets._sklearn_digits()
    assert datasets._bundled_digits_csv() is not None  # the fast path is the one taken
    datasets._sklearn_digits.cache_clear()
    monkeypatch.setattr(datasets, "_bundled_digits_csv", lambda: None)  # the file moved
    fallback = datasets._sklearn_digits()
    datasets._sklearn_digits.cache_clear()
    for got in (direct, fallback):
        np.testing.assert_array_equal(got[0].reshape(-1, 64), sk.data.astype(np.uint8))
        np.testing.assert_array_equal(got[1], sk.target)
        assert got[0].dtype == np.uint8 and got[1].dtype == np.int64
        assert not got[0].flags.writeable and not got[1].flags.writeable
