"""linear: forward vs the loop oracle and PyTorch, gradients, CUDA parity, errors."""

import numpy as np
import pytest
import reference_conv as ref
from helpers import arrays, assert_cuda_parity, assert_gradcheck, leaf, shapes
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.linear import linear


@st.composite
def linear_cases(draw, max_side=4):
    """(input shape (..., IN), weight shape (OUT, IN), has bias)."""
    lead = draw(shapes(0, 3, 1, max_side))
    in_f, out_f = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return lead + (in_f,), (out_f, in_f), draw(st.booleans())


def _inputs(case, seed, dtype=np.float64):
    x_shape, w_shape, has_bias = case
    x, w = arrays(x_shape, seed, dtype=dtype), arrays(w_shape, seed + 1, dtype=dtype)
    return (x, w, arrays(w_shape[:1], seed + 2, dtype=dtype)) if has_bias else (x, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=linear_cases(), seed=st.integers(0, 2**31))
def test_forward_matches_oracle(dtype, case, seed):
    arrays_in = _inputs(case, seed, dtype)
    y = linear(*(leaf(a, False) for a in arrays_in))
    expected = ref.linear(*arrays_in)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(y.numpy(), expected, **tol)


@given(case=linear_cases(max_side=3), seed=st.integers(0, 2**31))
def test_gradcheck(case, seed):
    assert_gradcheck(linear, *_inputs(case, seed))


def test_matches_torch():
    torch = pytest.importorskip("torch")
    x, w, b = arrays((2, 3, 5), 1), arrays((4, 5), 2), arrays((4,), 3)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    gy = arrays(tuple(ty.shape), 4)
    ty.backward(torch.tensor(gy))
    mx, mw, mb = leaf(x), leaf(w), leaf(b)
    y = linear(mx, mw, mb)
    y.backward(mc.tensor(gy, dtype=np.float64))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for m, t in ((mx, tx), (mw, tw), (mb, tb)):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_only_some_grads():
    mx, mw, mb = leaf(arrays((3, 4), 1), False), leaf(arrays((2, 4), 2)), leaf(arrays((2,), 3))
    linear(mx, mw, mb).sum().backward()
    assert mx.grad is None and mw.grad.shape == (2, 4)
    np.testing.assert_allclose(mb.grad.numpy(), [3.0, 3.0])


@pytest.mark.cuda
@settings(max_examples=4)
@given(case=linear_cases(max_side=3), seed=st.integers(0, 2**31))
def test_cuda_parity(case, seed):
    assert_cuda_parity(linear, *_inputs(case, seed), rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
def test_cuda_parity_float32():
    assert_cuda_parity(
        linear, *_inputs(((2, 9, 12), (10, 12), True), 5, np.float32), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------- errors
def _t(shape, dtype=np.float32):
    return mc.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, words",
    [
        ((3, 4), (2, 5), None, ["linear", "(3, 4)", "(2, 5)"]),
        ((3, 4), (2, 4, 1), None, ["linear", "weight", "(2, 4, 1)"]),
        ((3, 4), (2, 4), (3,), ["linear", "bias", "(2,)", "(3,)"]),
    ],
)
def test_shape_errors(x_shape, w_shape, b_shape, words):
    with pytest.raises(ValueError) as info:
        linear(_t(x_shape), _t(w_shape), None if b_shape is None else _t(b_shape))
    for word in words:
        assert word in str(info.value)


def test_dtype_mismatch():
    with pytest.raises(TypeError, match=r"linear.*float32.*float64"):
        linear(_t((3, 4)), _t((2, 4), np.float64))


@pytest.mark.cuda
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="linear"):
        linear(mc.tensor(np.zeros((3, 4), np.float32), device="cuda"), _t((2, 4)))
