"""Where a CPU kernel does not call its op's shared body, the two compute the same thing.

The shared bodies are what the CUDA kernels run (design.md, "One body for the CPU and for
CUDA"). Two CPU kernels turn a per-pixel gather over channels inside out for contiguous
reads: the channel pool and the spatial gate's logit gradient. Here each body runs on the CPU
through a small ``@njit`` loop that indexes exactly as its CUDA kernel does (strided 1-D
views), and its results must EQUAL the CPU kernel's: same comparisons and additions in the
same order. The CUDA kernels are in turn tested against the NumPy oracles on the simulator
(tests/ops/test_attention_ops.py).
"""

import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

# the modules (``minicbam.ops`` exports functions of the same names)
cp = importlib.import_module("minicbam.ops.channel_pool")
gate = importlib.import_module("minicbam.ops.gate")


@njit(cache=True)
def channel_pool_by_body(y, argmax, x, C, M):
    for q in range(argmax.size):  # as _channel_pool_cuda: one pixel per iteration
        n, m = q // M, q % M
        lo = n * C * M + m
        cp.channel_pool_at(y, argmax, x[lo : lo + C * M : M], n, m, M)


@njit(cache=True)
def spatial_logit_grad_by_body(gl, gy, x, s, C, M):
    for j in range(gl.size):  # as _logit_grad_cuda for the spatial gate
        lo = (j // M) * C * M + j % M
        gate.logit_grad_at(gl, gy[lo : lo + C * M : M], x[lo : lo + C * M : M], s, j)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5))
dtypes = st.sampled_from([np.float32, np.float64])


def _input(shape, dtype, seed, ties):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many tied maxima, so "the first maximum" matters
        return rng.integers(-2, 3, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@given(shapes, dtypes, st.integers(0, 2**31), st.booleans())
def test_channel_pool_cpu_kernel_matches_the_shared_body(shape, dtype, seed, ties):
    x = _input(shape, dtype, seed, ties)
    N, C, H, W = shape
    M = H * W
    y_cpu, y_body = (np.full(2 * N * M, np.nan, dtype) for _ in range(2))
    a_cpu, a_body = (np.full(N * M, -1, np.int64) for _ in range(2))
    cp._channel_pool_cpu(y_cpu, a_cpu, x.ravel(), C, M)
    channel_pool_by_body(y_body, a_body, x.ravel(), C, M)
    np.testing.assert_array_equal(a_cpu, a_body)
    np.testing.assert_array_equal(y_cpu, y_body)


def test_channel_pool_body_and_cpu_kernel_agree_on_nan():
    x = np.array([1.0, np.nan, 3.0, np.nan, 2.0, 0.5], np.float32).reshape(1, 6, 1, 1)
    outs = []
    for run in (cp._channel_pool_cpu, channel_pool_by_body):
        y, a = np.zeros(2, np.float32), np.zeros(1, np.int64)
        run(y, a, x.ravel(), 6, 1)
        outs.append((np.isnan(y[1]), a[0]))
    assert outs[0] == outs[1] == (True, 3)  # a NaN wins; the last NaN seen is kept


@given(shapes, dtypes, st.integers(0, 2**31))
def test_spatial_logit_grad_cpu_kernel_matches_the_shared_body(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    N, C, H, W = shape
    M = H * W
    gy, x = (rng.standard_normal(N * C * M).astype(dtype) for _ in range(2))
    s = (1 / (1 + np.exp(-rng.standard_normal(N * M)))).astype(dtype)
    gl_cpu, gl_body = np.empty(N * M, dtype), np.empty(N * M, dtype)
    gate._logit_grad_cpu(gl_cpu, gy, x, s, C, M, True)
    spatial_logit_grad_by_body(gl_body, gy, x, s, C, M)
    # fastmath lets the CPU kernel reassociate the float64 sums: equal to rounding
    np.testing.assert_allclose(gl_cpu, gl_body, rtol=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("spatial", [False, True])
def test_gate_bodies_are_what_the_cpu_kernels_call(spatial):
    # The other kernels of gate, channel_pool and batch_norm call their bodies' inlined
    # copies directly; a broken body must therefore change the CPU result. Checked here
    # for the scale body by comparing with the formula.
    rng = np.random.default_rng(0)
    N, C, M = 2, 3, 4
    x = rng.standard_normal(N * C * M)
    s = rng.random(N * M if spatial else N * C)
    y = np.empty_like(x)
    gate._scale_cpu(y, x, s, C, M, spatial)
    s_b = s.reshape(N, 1, M) if spatial else s.reshape(N, C, 1)
    np.testing.assert_array_equal(y, (x.reshape(N, C, M) * s_b).ravel())
