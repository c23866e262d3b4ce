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
gp = importlib.import_module("minicbam.ops.global_pool")


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


@njit(cache=True)
def global_pool_by_body(y, argmax, x, M, avg_slot, max_slot):
    NC = x.size // M
    for p in range(NC):  # one plane per iteration, global_plane's single pass
        gp.global_plane(y, argmax, x[p * M : (p + 1) * M], p, NC, avg_slot, max_slot)


SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0)


@given(
    st.integers(1, 4),
    st.integers(1, 70),
    dtypes,
    st.integers(0, 2**31),
    st.sampled_from(["normal", "ties", "specials"]),
    st.sampled_from([(0, 1), (1, 0), (0, -1), (-1, 0)]),
)
def test_global_pool_cpu_kernel_matches_the_shared_body(planes, M, dtype, seed, kind, slots):
    """The CPU global pool sums (reassociated) and takes the max in separate passes, and
    falls back to global_plane for a plane whose sum is NaN: same argmax and max as the
    body (first maximum, last NaN, -0.0 vs 0.0 as the body sees them), sums to rounding.
    Planes of 1-70 elements straddle the vector widths; ``specials`` puts NaN, +-inf and
    signed zeros at random places (inf - inf makes a NaN sum without a NaN)."""
    rng = np.random.default_rng(seed)
    if kind == "specials":
        x = rng.choice(np.array(SPECIALS + (2.0, -3.0), dtype), size=planes * M)
    else:
        x = _input((planes, M), dtype, seed, kind == "ties").ravel()
    y_cpu, y_body = (np.full(2 * planes, 7.0, dtype) for _ in range(2))
    a_cpu, a_body = (np.full(planes, -1, np.int64) for _ in range(2))
    gp._global_pool_cpu(y_cpu, a_cpu, x, M, *slots)
    global_pool_by_body(y_body, a_body, x, M, *slots)
    if slots[1] >= 0:
        np.testing.assert_array_equal(a_cpu, a_body)
        max_cpu, max_body = (
            y_cpu[slots[1] * planes :][:planes],
            y_body[slots[1] * planes :][:planes],
        )
        np.testing.assert_array_equal(max_cpu, max_body)
        np.testing.assert_array_equal(np.signbit(max_cpu), np.signbit(max_body))
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(y_cpu, y_body, rtol=rtol, atol=1e-30)


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
