"""The CUDA kernels that give one block per (n, c) plane (BatchNorm's plane statistics and
gradients, global_pool, the channel gate's logit gradient) on the simulator, against the
oracles and against the CPU kernels, with planes smaller than a block, exactly one block,
and larger than a block (the simulator's blocks have 32 threads), more planes than blocks,
N = 1 and C = 1 (the spatial attention's BatchNorm), ties and NaNs for the max."""

import math

import numpy as np
import pytest
import reference_pool as ref
from helpers import cotangent, run_with_grads, tied
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.batch_norm import batch_norm
from minicbam.ops.gate import gate
from minicbam.ops.global_pool import global_pool, global_pool_with_indices

pytestmark = pytest.mark.cuda
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}
seeds = st.integers(0, 2**16)
# H x W from 1 to 72 elements: below 32, exactly 32, between one and two strides, above
spatial_sizes = st.sampled_from([(1, 1), (2, 3), (4, 8), (5, 7), (7, 7), (8, 9)])
plane_shapes = st.builds(
    lambda n, c, hw: (n, c) + hw, st.integers(1, 3), st.integers(1, 3), spatial_sizes
)
FIXED_SHAPES = [(1, 1, 6, 7), (3, 1, 2, 3), (1, 3, 8, 9), (2, 2, 4, 8)]


def _train_shape(shape):
    return shape if shape[0] * shape[2] * shape[3] > 1 else (2,) + shape[1:]


# ----------------------------------------------------------------------------- BatchNorm
def batch_norm_grad_oracle(x, w, gy, eps):
    """Closed-form training gradients (gx, gw, gb) in float64, per channel over (N, H, W)."""
    x, gy = x.astype(np.float64), gy.astype(np.float64)
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * invstd
    gb, gw = gy.sum(axis=axes), (gy * xhat).sum(axis=axes)
    k = w.astype(np.float64).reshape(1, -1, 1, 1) * invstd
    gx = k * (
        gy - gy.mean(axis=axes, keepdims=True) - xhat * (gy * xhat).mean(axis=axes, keepdims=True)
    )
    return gx, gw, gb


def _bn_on(device, x, w, b, rm, rv):
    trm, trv = mc.tensor(rm, device=device), mc.tensor(rv, device=device)
    fn = lambda t, tw, tb: batch_norm(t, trm, trv, tw, tb, True, 0.3, 1e-5)
    y, grads = run_with_grads(fn, [x, w, b], device)
    return y, grads, trm.numpy(), trv.numpy()


def _check_batch_norm(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype)
    gpu = _bn_on("cuda", x, w, b, rm, rv)
    cpu = _bn_on("cpu", x, w, b, rm, rv)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, True, 0.3, 1e-5)
    grads_ref = batch_norm_grad_oracle(x, w, cotangent(shape, dtype), 1e-5)
    for got, want in zip(
        (gpu[0], *gpu[1], gpu[2], gpu[3]), (y_ref, *grads_ref, rm_ref, rv_ref), strict=True
    ):
        np.testing.assert_allclose(got, want, **TOL[dtype])
    for got, want in zip((gpu[0], *gpu[1], gpu[2], gpu[3]), (cpu[0], *cpu[1], cpu[2], cpu[3])):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=plane_shapes, seed=seeds)
def test_batch_norm_cuda_planes_match_oracle_and_cpu(dtype, shape, seed):
    _check_batch_norm(_train_shape(shape), dtype, seed)


@pytest.mark.parametrize("shape", FIXED_SHAPES)
def test_batch_norm_cuda_fixed_plane_sizes(shape):
    _check_batch_norm(shape, np.float32, 3)


def _running_var_after_one_step(x, device):
    C = x.shape[1]
    rv = mc.ones(C, dtype=np.float64, device=device)
    rm = mc.zeros(C, dtype=np.float64, device=device)
    batch_norm(mc.tensor(x, device=device), rm, rv, training=True, momentum=1.0)
    return rv.numpy()


def test_batch_norm_cuda_variance_of_a_large_offset():
    # x = 1e15 + N(0, 1) in planes of 49 elements (more than a block): the plane mean's
    # rounding error, squared, would take ~1% off the variance without the corrected
    # two-pass sums. One sample (x - 1e15 is exact: the oracle's data) ...
    rng = np.random.default_rng(0)
    d = np.round(rng.standard_normal((2, 2, 7, 7)) * 8) / 8
    K = 49
    want = d[0].reshape(2, -1).var(axis=1) * K / (K - 1)
    np.testing.assert_allclose(_running_var_after_one_step(1e15 + d[:1], "cuda"), want, rtol=1e-12)
    # ... and two, where the means of the planes, each rounded to 1e15's spacing, lose
    # ~0.5 % in the between-planes term on both devices alike
    x = 1e15 + d
    np.testing.assert_allclose(
        _running_var_after_one_step(x, "cuda"), _running_var_after_one_step(x, "cpu"), rtol=1e-12
    )


# ----------------------------------------------------------------------------- global_pool
@pytest.mark.parametrize("dtype", DTYPES)
@given(
    shape=plane_shapes,
    types=st.sampled_from([("avg", "max"), ("max", "avg"), ("avg",), ("max",)]),
    ties=st.booleans(),
    seed=seeds,
)
def test_global_pool_cuda_planes_match_oracle_and_cpu(dtype, shape, types, ties, seed):
    # ties: values from {-1, 0, 1}, so a plane's maximum recurs in several threads' strides
    rng = np.random.default_rng(seed)
    x = tied(shape, seed, dtype) if ties else rng.standard_normal(shape).astype(dtype)
    y_gpu, (g_gpu,) = run_with_grads(lambda t: global_pool(t, types), [x], "cuda")
    y_cpu, (g_cpu,) = run_with_grads(lambda t: global_pool(t, types), [x], "cpu")
    g_ref = ref.global_pool_grad(x, cotangent(y_gpu.shape, dtype), types)
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == np.float32 else {"rtol": 1e-13, "atol": 1e-14}
    np.testing.assert_allclose(y_gpu, ref.global_pool(x, types), **tol)
    np.testing.assert_allclose(g_gpu, g_ref, **tol)
    np.testing.assert_allclose(y_gpu, y_cpu, **tol)
    np.testing.assert_array_equal(g_gpu, g_cpu)  # the same argmax, the same 1/M share
    if "max" in types:
        idx = global_pool_with_indices(mc.tensor(x, device="cuda"), types)[1].copy_to_host()
        first = x.reshape(shape[0], shape[1], -1).argmax(axis=2)  # NumPy: the first maximum
        np.testing.assert_array_equal(idx, first)


def test_global_pool_cuda_nan_matches_cpu():
    # NaNs at several positions of planes larger than the block, in different threads'
    # strides: a NaN wins, and the CPU keeps the LAST NaN of a plane; CUDA must agree
    x = np.arange(2 * 3 * 70, dtype=np.float32).reshape(2, 3, 7, 10) % 11
    flat = x.reshape(6, 70)
    flat[0, [3, 40]] = np.nan  # two threads
    flat[1, [5, 37, 69]] = np.nan  # three in thread 5's stride
    flat[2, 0] = np.nan
    flat[3, [64, 1]] = np.nan
    got = [global_pool_with_indices(mc.tensor(x, device=d), ("max",)) for d in ("cuda", "cpu")]
    for y, idx in got:
        y = y.numpy()[0].reshape(6)
        assert np.isnan(y[:4]).all() and not np.isnan(y[4:]).any()
    idx_gpu, idx_cpu = got[0][1].copy_to_host(), got[1][1]
    np.testing.assert_array_equal(idx_gpu, idx_cpu)
    np.testing.assert_array_equal(idx_gpu.reshape(6)[:4], [40, 69, 0, 64])


# ----------------------------------------------------------------------------- channel gate
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=plane_shapes, seed=seeds)
def test_channel_gate_grad_cuda_planes_match_oracle_and_cpu(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    logits = (rng.standard_normal(shape[:2] + (1, 1)) * 3).astype(dtype)
    y_gpu, grads_gpu = run_with_grads(gate, [x, logits], "cuda")
    y_cpu, grads_cpu = run_with_grads(gate, [x, logits], "cpu")
    gy = cotangent(shape, dtype).astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    gl_ref = s * (1 - s) * (gy * x).sum(axis=(2, 3), keepdims=True)
    tol = TOL[dtype]
    np.testing.assert_allclose(grads_gpu[1], gl_ref, **tol)
    np.testing.assert_allclose(grads_gpu[0], gy * s, **tol)
    np.testing.assert_allclose(grads_gpu[1], grads_cpu[1], **tol)
    np.testing.assert_allclose(y_gpu, y_cpu, **tol)
    assert math.isfinite(float(np.abs(grads_gpu[1]).sum()))
