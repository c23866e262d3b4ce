"""Fused Squeeze-and-Excitation op: forward vs a loop oracle and PyTorch, float64 gradient
checks on drawn shapes, CUDA parity and CUDA vs the oracle, errors."""

import contextlib
import importlib

import numpy as np
import pytest
import reference_pool as ref
from helpers import assert_cuda_parity, assert_gradcheck, leaf
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.squeeze_excite import squeeze_excite, squeeze_excite_with_weights

SE_MODULE = importlib.import_module("minicbam.ops.squeeze_excite")  # (ops re-exports the op)

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 2e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-14}}
shapes4 = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))
hidden = st.integers(1, 3)
seeds = st.integers(0, 2**16)


def se_arrays(shape, K, seed, dtype=np.float64, scale=1.5):
    """x and (W1, b1, W2, b2) with the MLP's hidden units not all dead."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    arrays = [
        rng.standard_normal(shape),
        rng.standard_normal((K, C)) * scale,
        rng.uniform(0.1, 1.0, K),  # positive b1 keeps most hidden units in relu's linear part
        rng.standard_normal((C, K)) * scale,
        rng.standard_normal(C),
    ]
    return [a.astype(dtype) for a in arrays]


def tensors(arrays, device="cpu"):
    return [mc.tensor(a, dtype=a.dtype, device=device) for a in arrays]


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes4, K=hidden, seed=seeds)
def test_matches_oracle(dtype, shape, K, seed):
    arrays = se_arrays(shape, K, seed, dtype)
    y, s = squeeze_excite_with_weights(*tensors(arrays))
    y_ref, s_ref = ref.squeeze_excite(*arrays)
    assert y.dtype == dtype and y.shape == shape and s.shape == shape[:2]
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL[dtype])
    np.testing.assert_allclose(s, s_ref, **TOL[dtype])


@given(shape=shapes4, K=hidden, seed=seeds)
def test_gradcheck(shape, K, seed):
    assert_gradcheck(squeeze_excite, *se_arrays(shape, K, seed))


@settings(max_examples=5)
@given(shape=shapes4, K=hidden, seed=seeds)
def test_matches_torch(shape, K, seed):
    torch = pytest.importorskip("torch")
    arrays = se_arrays(shape, K, seed)
    ours = [leaf(a) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tx, tw1, tb1, tw2, tb2 = theirs
    ts = torch.sigmoid(torch.relu(tx.mean((2, 3)) @ tw1.T + tb1) @ tw2.T + tb2)
    ty = tx * ts[:, :, None, None]
    y = squeeze_excite(*ours)
    gy = np.random.default_rng(seed).standard_normal(shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[np.float64])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_only_the_requested_gradients():
    arrays = se_arrays((2, 3, 2, 2), 2, 0)
    x, w1, b1, w2, b2 = [leaf(a, requires_grad=k == 1) for k, a in enumerate(arrays)]
    squeeze_excite(x, w1, b1, w2, b2).sum().backward()
    assert w1.grad is not None and w1.grad.shape == (2, 3)
    assert x.grad is None and b1.grad is None and w2.grad is None and b2.grad is None


def test_extreme_logits_are_finite():
    x, w1, b1, w2, b2 = se_arrays((1, 2, 1, 2), 1, 3, np.float32)
    b2[:] = [-200.0, 200.0]
    w2[:] = 0.0
    y, s = squeeze_excite_with_weights(*tensors([x, w1, b1, w2, b2]))
    np.testing.assert_array_equal(s, [[0.0, 1.0]])
    np.testing.assert_array_equal(y.numpy()[0, 0], 0.0)
    np.testing.assert_array_equal(y.numpy()[0, 1], x[0, 1])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_parity_and_oracle(dtype):
    arrays = se_arrays((3, 5, 3, 4), 2, 11, dtype)
    assert_cuda_parity(squeeze_excite, *arrays)
    y, s = squeeze_excite_with_weights(*tensors(arrays, "cuda"))
    y_ref, s_ref = ref.squeeze_excite(*arrays)
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL[dtype])
    np.testing.assert_allclose(s.copy_to_host(), s_ref, **TOL[dtype])


def test_errors():
    x, w1, b1, w2, b2 = tensors(se_arrays((2, 4, 3, 3), 2, 0))
    with pytest.raises(ValueError, match=r"squeeze_excite: expected a 4-D input .*\(4, 3, 3\)"):
        squeeze_excite(mc.tensor(np.zeros((4, 3, 3))), w1, b1, w2, b2)
    with pytest.raises(
        ValueError, match=r"squeeze_excite: expected w2 of shape \(4, 2\).*got \(2, 4\)"
    ):
        squeeze_excite(x, w1, b1, w1, b2)
    with pytest.raises(
        ValueError, match=r"squeeze_excite: expected b1 of shape \(2,\).*got \(3,\)"
    ):
        squeeze_excite(x, w1, mc.tensor(np.zeros(3)), w2, b2)
    with pytest.raises(
        ValueError, match=r"squeeze_excite: expected w1 of shape \(K, 4\).*got \(2, 3\)"
    ):
        squeeze_excite(x, mc.tensor(np.zeros((2, 3))), b1, w2, b2)
    with pytest.raises(ValueError, match="squeeze_excite: expected non-empty H and W"):
        squeeze_excite(mc.tensor(np.zeros((2, 4, 0, 3))), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="squeeze_excite: expected x and weights of one floating"):
        squeeze_excite(x, mc.tensor(np.zeros((2, 4), np.float32)), b1, w2, b2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_the_hidden_layer_propagates(dtype):
    """relu(NaN) is NaN (as in PyTorch): a NaN hidden unit makes every excitation NaN."""
    arrays = [a.astype(dtype) for a in se_arrays((2, 4, 3, 3), 2, 0)]
    arrays[2][0] = np.nan  # b1[0]: hidden unit 0 is NaN for every sample
    y = squeeze_excite(*tensors(arrays))
    assert np.isnan(y.numpy()).all()


# ----------------------------------------------------------------------------- task layouts
# The CPU kernels split the work by samples (many samples) or by planes (n, c) (few): both
# layouts must agree with each other and with the oracle (their compiled plane sums may
# differ in the last bit). Odd H W, C = 1, N = 1 and N not a multiple of the thread count
# are all drawn.
layout_shapes = st.tuples(
    st.integers(1, 6), st.integers(1, 9), st.integers(1, 7), st.integers(1, 9)
)


@contextlib.contextmanager
def task_layout(by_plane):
    saved = SE_MODULE.PLANE_TASKS_BELOW
    SE_MODULE.PLANE_TASKS_BELOW = 10**9 if by_plane else 0
    try:
        yield
    finally:
        SE_MODULE.PLANE_TASKS_BELOW = saved


def forward_backward(arrays, gy):
    """(y, s, gx, gW1, gb1, gW2, gb2) as NumPy arrays."""
    ours = [leaf(a) for a in arrays]
    y, s = squeeze_excite_with_weights(*ours)
    y.backward(mc.tensor(gy, dtype=gy.dtype))
    return [y.numpy(), np.asarray(s)] + [t.grad.numpy() for t in ours]


def test_layout_rule_looks_at_the_batch_only():
    below = SE_MODULE.PLANE_TASKS_BELOW
    assert SE_MODULE.plane_tasks(1) and SE_MODULE.plane_tasks(below - 1)
    assert not SE_MODULE.plane_tasks(below) and not SE_MODULE.plane_tasks(64)


@settings(max_examples=30)
@given(shape=layout_shapes, K=hidden, seed=seeds, dtype=st.sampled_from(DTYPES))
def test_task_layouts_agree(shape, K, seed, dtype):
    arrays = se_arrays(shape, K, seed, dtype)
    gy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    with task_layout(by_plane=True):
        by_plane = forward_backward(arrays, gy)
    with task_layout(by_plane=False):
        by_sample = forward_backward(arrays, gy)
    for a, b in zip(by_plane, by_sample):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    y_ref, s_ref = ref.squeeze_excite(*arrays)
    np.testing.assert_allclose(by_sample[0], y_ref, **TOL[dtype])
    np.testing.assert_allclose(by_sample[1], s_ref, **TOL[dtype])


@pytest.mark.parametrize("by_plane", [True, False])
@settings(max_examples=15)
@given(shape=layout_shapes, K=hidden, seed=seeds)
def test_gradcheck_in_each_layout(by_plane, shape, K, seed):
    with task_layout(by_plane):
        assert_gradcheck(squeeze_excite, *se_arrays(shape, K, seed))


def test_leaf_keeps_the_gradient_array_without_a_copy():
    """backward's arrays are new, so x.grad is gx itself; a second backward adds into a new
    array and leaves the first one alone (the engine's usual accumulation)."""
    arrays = se_arrays((2, 3, 2, 2), 2, 5)
    x = leaf(arrays[0])
    weights = [leaf(a) for a in arrays[1:]]
    squeeze_excite(x, *weights).sum().backward()
    first = x.grad
    first_values = first.numpy()
    squeeze_excite(x, *weights).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first_values, rtol=1e-12)
    np.testing.assert_array_equal(first.numpy(), first_values)
