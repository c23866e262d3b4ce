"""Sums of a few long rows (segmented CPU path) and broadcasts of one value (fill path),
at sizes the drawn shapes of test_core_ops.py never reach."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicbam.kernels.strided import FILL_PARALLEL_MIN, broadcast_array
from minicbam.ops.reduce import ROW_SEGMENT, sum_array


@settings(max_examples=10, deadline=None)
@given(
    rows=st.integers(1, 7),
    extra=st.integers(-3, 3 * ROW_SEGMENT),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_few_long_rows_sum_like_float64(rows, extra, seed, dtype):
    """K from just under one segment to four segments, ragged last segment included."""
    K = ROW_SEGMENT + extra
    x = np.random.default_rng(seed).standard_normal((rows, K)).astype(dtype)
    got = sum_array(x, (1,))
    assert got.dtype == dtype and got.shape == (rows,)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, x.astype(np.float64).sum(1), rtol=rtol, atol=1e-6)


def test_sum_to_one_value_over_many_segments():
    x = np.random.default_rng(1).standard_normal((4, 8, 64, 65)).astype(np.float32)
    got = sum_array(x, (0, 1, 2, 3))
    np.testing.assert_allclose(got, x.astype(np.float64).sum(), rtol=1e-6)


def test_long_integer_rows_sum_exactly():
    x = (np.arange(3 * ROW_SEGMENT + 11) % 13).astype(np.int32).reshape(1, -1)
    got = sum_array(x, (1,))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, x.astype(np.int64).sum(1))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_long_rows_keep_nan_and_inf(bad):
    x = np.ones((2, 2 * ROW_SEGMENT + 1), np.float32)
    x[1, ROW_SEGMENT + 5] = bad
    got = sum_array(x, (1,))
    assert got[0] == 2 * ROW_SEGMENT + 1
    assert np.isnan(got[1]) if np.isnan(bad) else got[1] == np.inf


@pytest.mark.parametrize("size", [FILL_PARALLEL_MIN - 1, FILL_PARALLEL_MIN + 12345])
def test_broadcast_of_one_value_fills(size):
    value = np.array([[-2.75]], np.float32)
    got = broadcast_array(value, (size,))
    assert got.shape == (size,) and got.dtype == np.float32
    assert (got == np.float32(-2.75)).all()
    got4 = broadcast_array(value.reshape(1, 1, 1, 1), (3, 2, 1, size // 6))
    assert got4.shape == (3, 2, 1, size // 6) and (got4 == np.float32(-2.75)).all()


def test_broadcast_of_a_column_fills_rows():
    """The gather's stride-0 last dimension: each row is one value."""
    col = np.arange(5, dtype=np.float64).reshape(5, 1)
    expected = np.broadcast_to(col, (2, 5, 7))
    np.testing.assert_array_equal(broadcast_array(col, (2, 5, 7)), expected)
