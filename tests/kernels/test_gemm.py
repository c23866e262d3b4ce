"""The CPU GEMM's split over the task pool (kernels/gemm.py): every split (batch axis, row
axis, with broadcast operands and uneven remainders) gives np.matmul's product.

The split only runs for products over MIN_THREADED_FLOPS (and BLAS_SERIAL_FLOPS) on a machine
whose BLAS the pool can steer, so the tests lower the thresholds, fix the worker count and
force the pool path (the pieces then run inline when the pool is not usable: same pieces,
same sums)."""

import contextlib

import numpy as np
import pytest
from helpers import arrays
from hypothesis import given
from hypothesis import strategies as st

from minicbam.kernels import gemm as gemm_module


@contextlib.contextmanager
def split_everything(threads):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gemm_module, "MIN_THREADED_FLOPS", 0)
        mp.setattr(gemm_module, "BLAS_SERIAL_FLOPS", 0)
        mp.setattr(gemm_module, "pool_usable", lambda: True)
        mp.setattr(gemm_module, "cpu_workers", lambda: threads)
        yield


@st.composite
def split_cases(draw):
    """(a shape, b shape, threads): batch dims of 0-2 entries, each operand's own size or 1
    (broadcast), M from 1 to past 16 * threads (the row split), odd sizes (remainders)."""
    threads = draw(st.integers(2, 4))
    ndim = draw(st.integers(0, 2))
    batch = [draw(st.sampled_from([1, 2, 3, 5, 9])) for _ in range(ndim)]
    a_batch = [s if draw(st.booleans()) else 1 for s in batch]
    b_batch = [s if draw(st.booleans()) else 1 for s in batch]
    M = draw(st.sampled_from([1, 3, 16 * threads - 1, 16 * threads + 3]))
    K, N = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return tuple(a_batch) + (M, K), tuple(b_batch) + (K, N), threads


@given(case=split_cases(), seed=st.integers(0, 2**16))
def test_threaded_matmul_matches_numpy(case, seed):
    a_shape, b_shape, threads = case
    a, b = arrays(a_shape, seed), arrays(b_shape, seed + 1)
    want = np.matmul(a, b)
    out = np.full(want.shape, np.nan)  # a piece never written stays NaN
    with split_everything(threads):
        gemm_module.threaded_matmul(a, b, out)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "a_shape, b_shape, ta, tb",
    [
        ((6, 5, 4), (6, 4, 3), False, False),  # batch axis, evenly
        ((1, 5, 4), (7, 4, 3), False, False),  # a broadcast along the split batch axis
        ((7, 5, 4), (1, 3, 4), False, True),  # b broadcast, transposed
        ((2, 3, 5, 4), (3, 4, 6), False, False),  # leading batch dim of a only
        ((2, 1, 4, 5), (1, 3, 4, 6), True, False),  # two operands broadcast differently
        ((50, 4), (4, 3), False, False),  # no batch: rows in pieces, b shared
    ],
)
def test_gemm_split_matches_numpy(a_shape, b_shape, ta, tb):
    a, b = arrays(a_shape, 1), arrays(b_shape, 2)
    op_a = a.swapaxes(-1, -2) if ta else a
    op_b = b.swapaxes(-1, -2) if tb else b
    want = np.matmul(op_a, op_b)
    out = np.full(want.shape, np.nan)
    with split_everything(3):
        gemm_module.gemm(out, a, b, ta=ta, tb=tb)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)


def test_split_plan():
    # batch axis when it divides evenly or is large, rows when there is no useful batch
    assert gemm_module._split((6, 5, 3), 3) == (0, 6)
    assert gemm_module._split((2, 64, 3), 4) == (1, 4)
    assert gemm_module._split((2, 5, 3), 4) == (0, 2)
    assert gemm_module._split((1, 5, 3), 4) is None
