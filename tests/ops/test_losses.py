"""mse_loss, l1_loss, softplus, binary_cross_entropy(_with_logits): forward vs the oracle and
PyTorch, gradients, CUDA parity, errors."""

import numpy as np
import pytest
import reference as ref
from helpers import arrays, assert_cuda_parity, assert_gradcheck, leaf, shapes
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    l1_loss,
    mse_loss,
    softplus,
)

REDUCTION = st.sampled_from(["mean", "sum", "none"])
TOL = {np.float32: {"rtol": 2e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _bcel(x, t, reduction, weight=None, pos_weight=None):
    return binary_cross_entropy_with_logits(
        x, t, weight=weight, reduction=reduction, pos_weight=pos_weight
    )


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(
    shape=shapes(1, 3, 1, 4),
    reduction=REDUCTION,
    seed=st.integers(0, 2**32 - 1),
    broadcast_target=st.booleans(),
)
def test_regression_losses(name, dtype, shape, reduction, seed, broadcast_target):
    fn, oracle = {"mse_loss": (mse_loss, ref.mse_loss), "l1_loss": (l1_loss, ref.l1_loss)}[name]
    x = arrays(shape, seed, dtype=dtype)
    t = arrays(shape[-1:] if broadcast_target else shape, seed + 1, dtype=dtype)
    y = fn(leaf(x, False), leaf(t, False), reduction=reduction)
    np.testing.assert_allclose(y.numpy(), oracle(x, t, reduction), **TOL[dtype])
    # d = x - t is never 0 for continuous draws, so l1's kink is not met
    assert_gradcheck(lambda a, b: fn(a, b, reduction=reduction), x, t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(
    shape=shapes(1, 3, 1, 4), seed=st.integers(0, 2**32 - 1), beta=st.sampled_from([0.5, 1.0, 2.0])
)
def test_softplus(dtype, shape, seed, beta):
    x = arrays(shape, seed, -30, 30, dtype)
    y = softplus(leaf(x, False), beta=beta, threshold=20.0)
    np.testing.assert_allclose(y.numpy(), ref.softplus(x, beta, 20.0), **TOL[dtype])
    x64 = arrays(shape, seed, -5, 5)
    assert_gradcheck(lambda a: softplus(a, beta=beta), x64)


def test_softplus_is_smooth_at_zero():
    x = leaf(np.zeros(3))
    softplus(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(
    shape=shapes(1, 3, 1, 4),
    reduction=REDUCTION,
    seed=st.integers(0, 2**32 - 1),
    weighted=st.booleans(),
    pos_weighted=st.booleans(),
)
def test_bce_with_logits(dtype, shape, reduction, seed, weighted, pos_weighted):
    x = arrays(shape, seed, -6, 6, dtype)
    t = arrays(shape, seed + 1, 0, 1, dtype)
    w = arrays(shape[-1:], seed + 2, 0.5, 2, dtype) if weighted else None
    pw = arrays(shape[-1:], seed + 3, 0.5, 3, dtype) if pos_weighted else None
    y = _bcel(
        leaf(x, False),
        leaf(t, False),
        reduction,
        None if w is None else leaf(w, False),
        None if pw is None else leaf(pw, False),
    )
    expected = ref.binary_cross_entropy_with_logits(x, t, w, reduction, pw)
    np.testing.assert_allclose(y.numpy(), expected, **TOL[dtype])

    def fn(a, b):
        return _bcel(
            a,
            b,
            reduction,
            None if w is None else leaf(w.astype(np.float64), False),
            None if pw is None else leaf(pw.astype(np.float64), False),
        )

    assert_gradcheck(fn, x, t)


def test_bce_with_logits_extreme_logits_and_zero():
    x = leaf(np.array([-1000.0, 0.0, 1000.0]))
    t = leaf(np.array([1.0, 0.5, 0.0]), False)
    y = binary_cross_entropy_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(y.numpy(), [1000.0, np.log(2.0), 1000.0])
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [-1.0, 0.0, 1.0])  # sigmoid(x) - t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shape=shapes(1, 3, 1, 4), reduction=REDUCTION, seed=st.integers(0, 2**32 - 1))
def test_bce(dtype, shape, reduction, seed):
    p = arrays(shape, seed, 0.05, 0.95, dtype)
    t = arrays(shape, seed + 1, 0, 1, dtype)
    y = binary_cross_entropy(leaf(p, False), leaf(t, False), reduction=reduction)
    np.testing.assert_allclose(
        y.numpy(), ref.binary_cross_entropy(p, t, None, reduction), **TOL[dtype]
    )
    assert_gradcheck(lambda a, b: binary_cross_entropy(a, b, reduction=reduction), p, t)


def test_bce_clamps_log_at_minus_100():
    y = binary_cross_entropy(
        leaf(np.array([0.0, 1.0]), False), leaf(np.array([1.0, 0.0]), False), reduction="none"
    )
    np.testing.assert_allclose(y.numpy(), [100.0, 100.0])


def test_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, t = arrays((3, 4), 1, -3, 3), arrays((3, 4), 2, 0, 1)
    w, pw = arrays((4,), 3, 0.5, 2), arrays((4,), 4, 0.5, 3)
    tx, tt = torch.tensor(x), torch.tensor(t)
    for reduction in ("mean", "sum", "none"):
        cases = [
            (
                mse_loss(leaf(x), leaf(t), reduction=reduction),
                F.mse_loss(tx, tt, reduction=reduction),
            ),
            (
                l1_loss(leaf(x), leaf(t), reduction=reduction),
                F.l1_loss(tx, tt, reduction=reduction),
            ),
            (
                _bcel(leaf(x), leaf(t), reduction, leaf(w, False), leaf(pw, False)),
                F.binary_cross_entropy_with_logits(
                    tx, tt, torch.tensor(w), reduction=reduction, pos_weight=torch.tensor(pw)
                ),
            ),
            (
                binary_cross_entropy(leaf(t * 0.9 + 0.05), leaf(x.clip(0, 1)), reduction=reduction),
                F.binary_cross_entropy(tt * 0.9 + 0.05, tx.clip(0, 1), reduction=reduction),
            ),
        ]
        for got, want in cases:
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        softplus(leaf(x * 10), 2.0, 5.0).numpy(), F.softplus(tx * 10, 2.0, 5.0).numpy(), rtol=1e-10
    )


def test_errors():
    x = mc.ones(2, 3)
    with pytest.raises(ValueError, match="mse_loss: reduction must be one of"):
        mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"target size \(3,\) must be the same as input size"):
        binary_cross_entropy_with_logits(x, mc.ones(3))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        mse_loss(x, mc.ones(4))
    with pytest.raises(ValueError, match="beta must be positive"):
        softplus(x, beta=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_parity(dtype):
    x, t = arrays((2, 3), 5, -3, 3, dtype), arrays((2, 3), 6, 0.05, 0.95, dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    assert_cuda_parity(lambda a, b: mse_loss(a, b), x, t, **tol)
    assert_cuda_parity(lambda a, b: l1_loss(a, b, reduction="sum"), x, t, **tol)
    assert_cuda_parity(lambda a: softplus(a), x, **tol)
    assert_cuda_parity(lambda a, b: binary_cross_entropy_with_logits(a, b), x, t, **tol)
    assert_cuda_parity(lambda a, b: binary_cross_entropy(b, a.sigmoid()), x, t, **tol)
