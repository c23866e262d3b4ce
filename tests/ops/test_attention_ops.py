"""Fused attention ops (channel_pool, global_pool, gate): forward vs loop oracles and PyTorch,
float64 gradient checks, CUDA parity, errors."""

import numpy as np
import pytest
import reference_pool as ref
from helpers import (
    assert_cuda_parity,
    assert_gradcheck,
    assert_matches_oracle,
    distinct_or_tied,
    leaf,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.channel_pool import channel_pool
from minicbam.ops.gate import gate
from minicbam.ops.global_pool import global_pool

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-14}}
shapes4 = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
seeds = st.integers(0, 2**16)
pool_types = st.sampled_from([("avg", "max"), ("max", "avg"), ("avg",), ("max",)])


def distinct(shape, seed, dtype=np.float64):
    """Values in [-2, 2) with no ties, so every max has one winner."""
    return distinct_or_tied(shape, seed, False, dtype)


def channel_pool_oracle(x, gy):
    return ref.channel_pool(x)[0], [ref.channel_pool_grad(x, gy)]


def global_pool_oracle(types):
    def oracle(x, gy):
        return ref.global_pool(x, types), [ref.global_pool_grad(x, gy, types)]

    return oracle


def logits_shape(x_shape, spatial):
    N, C, H, W = x_shape
    return (N, 1, H, W) if spatial else (N, C, 1, 1)


# ----------------------------------------------------------------------------- channel_pool
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes4, ties=st.booleans(), seed=seeds)
def test_channel_pool_matches_oracle(dtype, shape, ties, seed):
    # with ties the max gradient goes to the first maximal channel (oracle backward)
    x = distinct_or_tied(shape, seed, ties, dtype)
    fn_y = channel_pool(mc.tensor(x))
    y_ref, _ = ref.channel_pool(x)
    assert fn_y.shape == (shape[0], 2, shape[2], shape[3]) and fn_y.dtype == dtype
    np.testing.assert_allclose(fn_y.numpy(), y_ref, **TOL[dtype])
    assert_matches_oracle(channel_pool, [x], channel_pool_oracle, "cpu", **TOL[dtype])


@given(shape=shapes4, seed=seeds)
def test_channel_pool_gradcheck(shape, seed):
    assert_gradcheck(channel_pool, distinct(shape, seed))


@settings(max_examples=5)
@given(shape=shapes4, seed=seeds)
def test_channel_pool_matches_torch(shape, seed):
    torch = pytest.importorskip("torch")
    x = distinct(shape, seed)
    t, tx = leaf(x), torch.tensor(x, requires_grad=True)
    y = channel_pool(t)
    ty = torch.cat([tx.mean(1, keepdim=True), tx.max(1, keepdim=True)[0]], 1)
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[np.float64])
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), **TOL[np.float64])


def test_channel_pool_ties_go_to_first_channel():
    t = leaf(np.ones((1, 3, 2, 2)))
    channel_pool(t)[:, 1].sum().backward()
    expected = np.zeros((1, 3, 2, 2))
    expected[:, 0] = 1.0
    np.testing.assert_array_equal(t.grad.numpy(), expected)


# ----------------------------------------------------------------------------- global_pool
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes4, types=pool_types, ties=st.booleans(), seed=seeds)
def test_global_pool_matches_oracle(dtype, shape, types, ties, seed):
    x = distinct_or_tied(shape, seed, ties, dtype)
    y = global_pool(mc.tensor(x), types)
    assert y.shape == (len(types),) + shape[:2]
    np.testing.assert_allclose(y.numpy(), ref.global_pool(x, types), **TOL[dtype])
    fn = lambda t: global_pool(t, types)
    assert_matches_oracle(fn, [x], global_pool_oracle(types), "cpu", **TOL[dtype])


@given(shape=shapes4, types=pool_types, seed=seeds)
def test_global_pool_gradcheck(shape, types, seed):
    assert_gradcheck(lambda t: global_pool(t, types), distinct(shape, seed))


@settings(max_examples=5)
@given(shape=shapes4, seed=seeds)
def test_global_pool_matches_torch(shape, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = distinct(shape, seed)
    t, tx = leaf(x), torch.tensor(x, requires_grad=True)
    y = global_pool(t)
    ty = torch.stack([F.adaptive_avg_pool2d(tx, 1), F.adaptive_max_pool2d(tx, 1)])[..., 0, 0]
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[np.float64])
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), **TOL[np.float64])


# ----------------------------------------------------------------------------- gate
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes4, spatial=st.booleans(), seed=seeds)
def test_gate_matches_oracle(dtype, shape, spatial, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    logits = (rng.standard_normal(logits_shape(shape, spatial)) * 5).astype(dtype)
    y = gate(mc.tensor(x), mc.tensor(logits))
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ref.gate(x, logits), **TOL[dtype])


@given(shape=shapes4, spatial=st.booleans(), seed=seeds)
def test_gate_gradcheck(shape, spatial, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    logits = rng.standard_normal(logits_shape(shape, spatial)) * 3
    assert_gradcheck(gate, x, logits)


@settings(max_examples=5)
@given(shape=shapes4, spatial=st.booleans(), seed=seeds)
def test_gate_matches_torch(shape, spatial, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x, logits = rng.standard_normal(shape), rng.standard_normal(logits_shape(shape, spatial))
    t, tl = leaf(x), leaf(logits)
    tx, ttl = torch.tensor(x, requires_grad=True), torch.tensor(logits, requires_grad=True)
    y, ty = gate(t, tl), tx * torch.sigmoid(ttl)
    gy = rng.standard_normal(shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[np.float64])
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), **TOL[np.float64])
    np.testing.assert_allclose(tl.grad.numpy(), ttl.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gate_only_the_requested_gradient():
    x, logits = leaf(np.ones((1, 2, 2, 2))), leaf(np.zeros((1, 2, 1, 1)), requires_grad=False)
    gate(x, logits).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.5)
    assert logits.grad is None


def test_gate_extreme_logits_are_finite():
    x = mc.tensor(np.ones((1, 1, 1, 2), np.float32))
    logits = mc.tensor(np.array([[[[-200.0, 200.0]]]], np.float32))
    np.testing.assert_array_equal(gate(x, logits).numpy(), [[[[0.0, 1.0]]]])


# ----------------------------------------------------------------------------- CUDA parity
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_ops_cuda_parity(dtype):
    x = distinct((2, 4, 5, 6), 7, dtype)
    rng = np.random.default_rng(8)
    assert_cuda_parity(channel_pool, x)
    for types in (("avg", "max"), ("max",)):
        assert_cuda_parity(lambda t, types=types: global_pool(t, types), x)
    for spatial in (False, True):
        logits = rng.standard_normal(logits_shape(x.shape, spatial)).astype(dtype)
        assert_cuda_parity(gate, x, logits)


@pytest.mark.cuda
@settings(max_examples=6)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    types=pool_types,
    spatial=st.booleans(),
    ties=st.booleans(),
    seed=seeds,
)
def test_attention_ops_cuda_match_oracle(shape, types, spatial, ties, seed):
    # the CUDA kernels against the oracles: parity misses a bug in a body both devices share
    x = distinct_or_tied(shape, seed, ties)
    assert_matches_oracle(channel_pool, [x], channel_pool_oracle, "cuda")
    fn = lambda t: global_pool(t, types)
    assert_matches_oracle(fn, [x], global_pool_oracle(types), "cuda")
    logits = np.random.default_rng(seed + 1).standard_normal(logits_shape(shape, spatial)) * 3

    def gate_oracle(x, logits, gy):
        s = 1.0 / (1.0 + np.exp(-logits))
        axes = (1,) if spatial else (2, 3)
        return x * s, [gy * s, s * (1 - s) * (gy * x).sum(axis=axes, keepdims=True)]

    assert_matches_oracle(gate, [x, logits], gate_oracle, "cuda", rtol=1e-10)


# ----------------------------------------------------------------------------- errors
def test_attention_op_errors():
    x = mc.tensor(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"channel_pool: expected a 4-D input.*\(3, 4, 4\)"):
        channel_pool(mc.tensor(np.zeros((3, 4, 4))))
    with pytest.raises(ValueError, match="global_pool: pool_types must be distinct entries"):
        global_pool(x, ("avg", "lse"))
    with pytest.raises(ValueError, match="global_pool: pool_types"):
        global_pool(x, ("max", "max"))
    with pytest.raises(ValueError, match=r"gate: logits must have shape .*got \(2, 3, 4, 1\)"):
        gate(x, mc.tensor(np.zeros((2, 3, 4, 1))))
    with pytest.raises(ValueError, match=r"gate: logits .*got \(1, 3, 1, 1\)"):
        gate(x, mc.tensor(np.zeros((1, 3, 1, 1))))
    with pytest.raises(TypeError, match="gate: expected x and logits of one floating-point"):
        gate(x, mc.tensor(np.zeros((2, 3, 1, 1), np.float32)))
