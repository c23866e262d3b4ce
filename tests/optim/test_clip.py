"""clip_grad_norm_ and clip_grad_value_ against their formulas and torch.nn.utils."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam import optim

SHAPES = [(3,), (2, 3), (1,)]


def params_with_grads(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    grads = [scale * rng.standard_normal(s) for s in SHAPES]
    params = [mc.zeros(s, dtype=mc.float64, requires_grad=True) for s in SHAPES]
    for p, g in zip(params, grads):
        p.grad = mc.tensor(g, dtype=mc.float64)
    return params, grads


def total_norm(grads, q):
    flat = np.concatenate([g.ravel() for g in grads])
    return np.abs(flat).max() if q == math.inf else (np.abs(flat) ** q).sum() ** (1 / q)


norm_types = st.sampled_from([2.0, 1.0, 3.0, math.inf])


@given(seed=st.integers(0, 2**16), max_norm=st.floats(0.01, 10.0), q=norm_types)
def test_clip_grad_norm_formula(seed, max_norm, q):
    params, grads = params_with_grads(seed)
    total = optim.clip_grad_norm_(params, max_norm, norm_type=q)
    assert isinstance(total, float)
    want = total_norm(grads, q)
    np.testing.assert_allclose(total, want, rtol=1e-12)
    coef = min(1.0, max_norm / (want + 1e-6))
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-12)
    if coef < 1:
        np.testing.assert_allclose(
            total_norm([p.grad.numpy() for p in params], q), max_norm, rtol=1e-5
        )


@given(seed=st.integers(0, 2**16), max_norm=st.floats(0.01, 10.0), q=norm_types)
def test_clip_grad_norm_matches_torch(seed, max_norm, q):
    torch = pytest.importorskip("torch")
    params, grads = params_with_grads(seed)
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(tparams, grads):
        p.grad = torch.tensor(g)
    want = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=q).item()
    np.testing.assert_allclose(optim.clip_grad_norm_(params, max_norm, q), want, rtol=1e-10)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-10)


def test_clip_grad_norm_edge_cases():
    p = mc.zeros(2, requires_grad=True)
    assert optim.clip_grad_norm_([p], 1.0) == 0.0  # no gradients at all
    p.grad = mc.tensor([3.0, 4.0])
    assert optim.clip_grad_norm_(p, 10.0) == 5.0  # a single tensor; small norm: unchanged
    np.testing.assert_array_equal(p.grad.numpy(), [3.0, 4.0])
    p.grad = mc.tensor([math.inf, 1.0])
    with pytest.raises(RuntimeError, match="total norm of order 2.0 is inf"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="norm_type must be positive"):
        optim.clip_grad_norm_([p], 1.0, norm_type=0)


def test_clip_grad_value():
    params, grads = params_with_grads(7, scale=3.0)
    optim.clip_grad_value_(params, 1.5)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), np.clip(g, -1.5, 1.5))
    with pytest.raises(ValueError, match="clip_value must be non-negative"):
        optim.clip_grad_value_(params, -1.0)
