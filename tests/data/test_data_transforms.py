"""Transforms against slow references, and the reproducibility of per-sample randomness."""

import numpy as np
import pytest

from minicbam.data import DataLoader, Digits, TensorDataset, TransformedDataset, numpy_collate
from minicbam.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    ToFloat,
)


def image(c=2, h=5, w=6, seed=0):
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32) + 1  # no zeros


def crop_reference(x, size, padding, top, left):
    """Element by element: out[c, a, b] is the padded image at (top + a, left + b)."""
    (h, w), (pl, pt) = size, padding
    out = np.zeros((x.shape[0], h, w), x.dtype)
    for c in range(x.shape[0]):
        for a in range(h):
            for b in range(w):
                r, s = top + a - pt, left + b - pl
                if 0 <= r < x.shape[1] and 0 <= s < x.shape[2]:
                    out[c, a, b] = x[c, r, s]
    return out


# The last case has windows lying wholly inside the padding.
@pytest.mark.parametrize(
    "size, padding",
    [((5, 6), 0), ((4, 4), 0), ((5, 6), 2), ((3, 7), (1, 3)), ((6, 8), (2, 1)), ((3, 3), 4)],
)
def test_random_crop_matches_slow_reference(size, padding):
    x = image()
    pl, pt = (padding, padding) if isinstance(padding, int) else padding
    ph, pw = x.shape[1] + 2 * pt, x.shape[2] + 2 * pl
    crop = RandomCrop(size, padding)
    offsets = set()
    for seed in range(2000):
        got = crop(x, np.random.default_rng(seed))
        # Documented draw order: top offset, then left offset.
        draws = np.random.default_rng(seed)
        top, left = draws.integers(0, ph - size[0] + 1), draws.integers(0, pw - size[1] + 1)
        np.testing.assert_array_equal(got, crop_reference(x, size, (pl, pt), top, left))
        offsets.add((top, left))
    # Every offset of the padded image is reachable (uniform draws; 2000 seeds cover them all).
    assert offsets == {(i, j) for i in range(ph - size[0] + 1) for j in range(pw - size[1] + 1)}


def test_random_crop_four_value_padding_and_errors():
    x = np.ones((1, 2, 2), np.float32)
    # (left, top, right, bottom) = (1, 0, 0, 0): a 2x3 crop is the whole padded image.
    got = RandomCrop((2, 3), padding=(1, 0, 0, 0))(x, np.random.default_rng(0))
    np.testing.assert_array_equal(got[0], [[0, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match=r"crop size \(5, 5\) exceeds padded image size \(4, 4\)"):
        RandomCrop(5, padding=1)(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding must have 1, 2 or 4 values"):
        RandomCrop(2, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="expected an image of shape"):
        RandomCrop(2)(np.zeros((4, 4)), np.random.default_rng(0))


def test_horizontal_flip():
    x = image()
    np.testing.assert_array_equal(
        RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[:, :, ::-1]
    )
    assert RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)) is x
    flips = [
        not np.array_equal(RandomHorizontalFlip()(x, np.random.default_rng(s)), x)
        for s in range(400)
    ]
    assert 150 < sum(flips) < 250
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        RandomHorizontalFlip(1.5)


def test_normalize_per_channel():
    x = image(c=3)
    mean, std = [0.1, 0.2, 0.3], [0.5, 2.0, 4.0]
    got = Normalize(mean, std)(x)
    assert got.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(got[c], (x[c] - mean[c]) / std[c], rtol=1e-6)
    np.testing.assert_allclose(Normalize(0.5, 2.0)(x), (x - 0.5) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="image has 3 channels but mean/std have 2"):
        Normalize([0, 0], [1, 1])(x)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0], [0])
    with pytest.raises(TypeError, match="expected a float image, got dtype uint8"):
        Normalize(0, 1)(np.zeros((1, 2, 2), np.uint8))


def test_to_float():
    x = np.array([[[0, 51, 255]]], np.uint8)
    got = ToFloat()(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([[[0.0, 0.2, 1.0]]], np.float32))
    assert ToFloat()(np.zeros((4, 5), np.uint8)).shape == (1, 4, 5)
    with pytest.raises(TypeError, match="expected uint8 or float pixels, got dtype int32"):
        ToFloat()(np.zeros((1, 2, 2), np.int32))


def test_compose_accepts_plain_callables_and_shares_the_generator():
    t = Compose([ToFloat(), lambda x: x * 2, RandomHorizontalFlip(1.0)])
    got = t(np.array([[[0, 255]]], np.uint8), np.random.default_rng(0))
    np.testing.assert_array_equal(got, [[[2.0, 0.0]]])
    with pytest.raises(TypeError, match="must be callable"):
        Compose([3])


AUGMENT = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])


def augmented_digits(seed):
    return Digits("test", transform=AUGMENT, seed=seed)


def test_per_sample_randomness_depends_only_on_seed_epoch_index():
    a, b = augmented_digits(1), augmented_digits(1)
    for i in (0, 5):
        np.testing.assert_array_equal(a[i][0], a[i][0])  # re-reading gives the same sample
        np.testing.assert_array_equal(a[i][0], b[i][0])
    a.set_epoch(3)
    assert not all(np.array_equal(a[i][0], b[i][0]) for i in range(10))
    b.set_epoch(3)
    np.testing.assert_array_equal(a[7][0], b[7][0])
    other = augmented_digits(2)
    assert not all(np.array_equal(a[i][0], other[i][0]) for i in range(10))


def test_transformed_dataset_matches_its_documented_generator():
    x = np.stack([image(seed=s) for s in range(4)])
    ds = TransformedDataset(TensorDataset(x, np.arange(4)), RandomCrop(3, padding=1), seed=9)
    ds.set_epoch(2)
    expected = RandomCrop(3, padding=1)(x[3], np.random.default_rng([9, 2, 3]))
    np.testing.assert_array_equal(ds[3][0], expected)
    assert ds[3][1] == 3  # the target is untouched without target_transform
    bare = TransformedDataset(np.arange(3), lambda v: v + 10)
    assert bare[2] == 12  # non-tuple samples are transformed whole
    both = TransformedDataset(
        TensorDataset(x, np.arange(4)), lambda v: v * 0, target_transform=lambda y: y + 100
    )
    image_out, target = both[2]
    assert target == 102  # target_transform sees the target, not the image
    np.testing.assert_array_equal(image_out, x[2] * 0)


def run_epochs(dataset, epochs, start=0):
    dl = DataLoader(dataset, batch_size=64, shuffle=True, seed=4, collate_fn=numpy_collate)
    dl.set_epoch(start)
    return [np.concatenate([x for x, _ in dl]) for _ in range(epochs)]


def test_resumed_run_reproduces_augmented_batches():
    full = run_epochs(augmented_digits(0), 3)
    resumed = run_epochs(augmented_digits(0), 1, start=2)
    np.testing.assert_array_equal(resumed[0], full[2])
    assert not np.array_equal(full[1], full[2])
