"""The CUDA block reductions (minicbam/kernels/block_reduce.py) on the simulator: sums and
(max, index) pairs against NumPy, with ties, NaN and threads that hold nothing."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import cuda  # a module global: the simulator swaps it for its fake module

from minicbam.kernels import block_reduce

pytestmark = pytest.mark.cuda


def _one_block_sum(x):
    block_sum = block_reduce.block_sum_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def kernel(out, x):
        buf = cuda.shared.array(T, np.float64)
        acc = 0.0
        for i in range(cuda.threadIdx.x, x.size, cuda.blockDim.x):  # coalesced stride
            acc += x[i]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            out[0] = total

    out = cuda.to_device(np.zeros(1))
    kernel[1, T](out, cuda.to_device(x))
    return out.copy_to_host()[0]


def _one_block_argmax(x):
    block_argmax = block_reduce.block_argmax_device()
    T = block_reduce.block_threads()

    @cuda.jit
    def kernel(best, where, x):
        vals = cuda.shared.array(T, np.float64)
        idxs = cuda.shared.array(T, np.int64)
        v, j = 0.0, -1
        for i in range(cuda.threadIdx.x, x.size, cuda.blockDim.x):
            if j < 0 or x[i] > v or (math.isnan(x[i]) and not math.isnan(v)):
                v, j = x[i], i
        b, w = block_argmax(vals, idxs, v, j)
        if cuda.threadIdx.x == 0:
            best[0] = b
            where[0] = w

    best = cuda.to_device(np.zeros(1))
    where = cuda.to_device(np.zeros(1, np.int64))
    kernel[1, T](best, where, cuda.to_device(x))
    return best.copy_to_host()[0], where.copy_to_host()[0]


def _lengths_across_the_block(values):
    # lengths drawn uniformly, so that every thread of the block (32 on the simulator) and
    # more than one pass of the stride loop are reached, not only short lists
    return st.integers(1, 100).flatmap(lambda n: st.lists(values, min_size=n, max_size=n))


@given(_lengths_across_the_block(st.integers(-5, 5)))
def test_block_sum_matches_numpy(values):
    x = np.asarray(values, np.float64) / 4  # exact in float64: the sum is order-free
    assert _one_block_sum(x) == x.sum()


@given(_lengths_across_the_block(st.integers(-3, 3)))
def test_block_argmax_first_of_ties(values):
    # few distinct values: ties are the common case; fewer elements than threads leaves
    # threads with nothing (index -1)
    x = np.asarray(values, np.float64)
    best, where = _one_block_argmax(x)
    assert best == x.max()
    assert where == int(np.argmax(x))  # NumPy's argmax is the first maximum


def test_block_argmax_nan_wins_first_nan():
    x = np.array([1.0, np.nan, 7.0] * 30)
    best, where = _one_block_argmax(x)
    assert np.isnan(best) and where == 1
