"""dropout: mask statistics, scaling, reproducibility under manual_seed, gradients, errors."""

import numpy as np
import pytest
import reference as ref
from helpers import arrays, leaf, shapes
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.dropout import dropout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes(1, 3, 1, 6), p=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_forward_and_gradient_use_one_mask(dtype, shape, p, seed):
    x = arrays(shape, seed, 0.5, 2.0, dtype)  # nonzero, so y == 0 exactly marks a drop
    t = leaf(x)
    mc.manual_seed(seed)
    y = dropout(t, p)
    assert y.dtype == dtype and y.shape == shape
    kept = y.numpy() != 0
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), ref.dropout_expected(x, kept, p), rtol=rtol)
    gy = arrays(shape, seed + 1, dtype=dtype)
    y.backward(mc.tensor(gy, dtype=dtype))
    np.testing.assert_allclose(t.grad.numpy(), ref.dropout_expected(gy, kept, p), rtol=rtol)


def test_keep_rate_is_one_minus_p():
    mc.manual_seed(0)
    y = dropout(mc.ones(200, 100), 0.3).numpy()
    assert abs((y != 0).mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation


def test_manual_seed_reproduces_the_mask():
    x = mc.ones(8, 8)
    mc.manual_seed(123)
    a = dropout(x).numpy()
    mc.manual_seed(123)
    b = dropout(x).numpy()
    c = dropout(x).numpy()  # the generator moved on
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_identity_cases():
    x = mc.tensor(arrays((3, 4), 1), requires_grad=True)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x


def test_p_one_gives_zeros_and_zero_gradient():
    x = leaf(arrays((3, 4), 2))
    y = dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


def test_errors():
    x = mc.ones(3)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout: probability has to be between 0 and 1"):
            dropout(x, p)
    with pytest.raises(TypeError, match="dropout: p must be a number"):
        dropout(x, "0.5")
    with pytest.raises(TypeError, match="floating-point"):
        dropout(mc.tensor(np.ones(3, dtype=np.int64)), 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_same_mask_as_cpu(dtype):
    x = arrays((3, 5), 3, 0.5, 2.0, dtype)
    results = []
    for dev in ("cpu", "cuda"):
        t = leaf(x, device=dev)
        mc.manual_seed(9)
        y = dropout(t, 0.4)
        y.backward(mc.tensor(np.ones_like(x), dtype=dtype, device=dev))
        assert y.device == dev
        results.append((y.numpy(), t.grad.numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


def _splitmix64(seed, i):
    """The textbook splitmix64 output for state seed + (i + 1) * golden, in Python ints."""
    mask = (1 << 64) - 1
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_mask_is_the_counter_hash_of_the_drawn_seed():
    # first splitmix64 output of seed 0 (the published reference value)
    assert _splitmix64(0, 0) == 0xE220A8397B1DCDAF
    x = mc.ones(7, 5, dtype=np.float64)
    mc.manual_seed(4)
    y = dropout(x, 0.3).numpy().reshape(-1)
    seed = int(np.random.default_rng(4).integers(0, 2**64, dtype=np.uint64))
    threshold = round(0.3 * 2**53)
    kept = np.array([_splitmix64(seed, i) >> 11 >= threshold for i in range(35)])
    np.testing.assert_array_equal(y != 0, kept)
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-15)


@pytest.mark.cuda
@pytest.mark.parametrize("p", [0.2, 0.75])
def test_cuda_mask_fraction_scale_and_backward_mask(p):
    x = mc.tensor(np.ones((40, 50), np.float32), device="cuda", requires_grad=True)
    mc.manual_seed(11)
    y = dropout(x, p)
    gy = arrays((40, 50), 12, 0.5, 2.0, np.float32)
    y.backward(mc.tensor(gy, device="cuda"))
    out, grad = y.numpy(), x.grad.numpy()
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / kept.size)
    np.testing.assert_allclose(out[kept], np.float32(1 / (1 - p)), rtol=1e-6)
    np.testing.assert_allclose(grad, np.where(kept, gy / (1 - p), 0), rtol=1e-6)


@pytest.mark.cuda
def test_cuda_seeded_masks_reproduce_and_move_on_without_copies():
    from minicbam.device_events import count_device_events

    x = mc.ones(16, 16, device="cuda")
    dropout(x)  # warm-up: the kernel is built
    mc.manual_seed(5)
    with count_device_events(strict=True) as ev:
        a, b = dropout(x), dropout(x)
    assert (ev.host_to_device, ev.device_to_host, ev.launches) == (0, 0, 2)
    mc.manual_seed(5)
    np.testing.assert_array_equal(dropout(x).numpy(), a.numpy())
    assert not np.array_equal(a.numpy(), b.numpy())
