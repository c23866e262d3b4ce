"""conv2d's pointwise path (1x1, one group, no padding: kernels/pointwise.py): forward and all
gradients vs the loop oracle, float64 gradcheck, agreement with im2col + GEMM, CUDA parity
and CUDA vs the oracle, and the routing rule. The path is forced on both devices
(conv2d.POINTWISE = "always"; by default only CUDA takes it). Shapes are drawn so that
strides larger than the input, odd sides, batch 1 and single channels come up; each example
checks that the pointwise path ran."""

import importlib

import numpy as np
import pytest
import reference_conv as ref
from helpers import arrays, assert_cuda_parity, assert_gradcheck, assert_matches_oracle, leaf
from hypothesis import given, settings
from hypothesis import strategies as st

from minicbam.ops.conv2d import conv2d

conv2d_module = importlib.import_module("minicbam.ops.conv2d")


@pytest.fixture(autouse=True)
def _pointwise_always(monkeypatch):
    monkeypatch.setattr(conv2d_module, "POINTWISE", "always")


@st.composite
def pointwise_cases(draw, max_n=3, max_c=5, max_side=7):
    """(x shape, w shape, has bias, stride, dilation) of a pointwise conv; C * CO > 8 so
    that the direct path (tiny channel products) does not take it."""
    cin = draw(st.integers(1, max_c))
    least = -(-9 // cin)
    cout = draw(st.integers(least, max(least + 2, max_c + 4)))
    x_shape = (
        draw(st.integers(1, max_n)),
        cin,
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))  # no effect on a 1x1 kernel
    return x_shape, (cout, cin, 1, 1), draw(st.booleans()), stride, dilation


def _inputs(case, seed, dtype=np.float64):
    x_shape, w_shape, has_bias, *_ = case
    x, w = arrays(x_shape, seed, dtype=dtype), arrays(w_shape, seed + 1, dtype=dtype)
    return (x, w, arrays((w_shape[0],), seed + 2, dtype=dtype)) if has_bias else (x, w)


def _fn(case):
    *_, stride, dilation = case
    return lambda x, w, b=None: conv2d(x, w, b, stride, 0, dilation)


def _oracle(case):
    kwargs = {"stride": case[3], "dilation": case[4]}

    def oracle(x, w, *rest):
        *b, gy = rest
        gx, gw, gb = ref.conv2d_grad(x, w, gy, **kwargs)
        return ref.conv2d(x, w, *b, **kwargs), [gx, gw] + ([gb] if b else [])

    return oracle


def _check_path(case, arrays_in, device="cpu"):
    y = _fn(case)(*(leaf(a, device=device) for a in arrays_in))
    assert y.creator.algorithm == "pointwise"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=pointwise_cases(), seed=st.integers(0, 2**31))
def test_pointwise_matches_oracle(dtype, case, seed):
    arrays_in = _inputs(case, seed, dtype)
    _check_path(case, arrays_in)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert_matches_oracle(_fn(case), arrays_in, _oracle(case), "cpu", **tol)


@given(case=pointwise_cases(), seed=st.integers(0, 2**31))
def test_pointwise_gradcheck(case, seed):
    arrays_in = _inputs(case, seed)
    _check_path(case, arrays_in)
    assert_gradcheck(_fn(case), *arrays_in)


@settings(max_examples=10)
@given(case=pointwise_cases(), seed=st.integers(0, 2**31))
def test_pointwise_agrees_with_im2col(case, seed):
    arrays_in = _inputs(case, seed)
    results = []
    for route in ("always", "never"):
        conv2d_module.POINTWISE = route
        try:
            tensors = [leaf(a) for a in arrays_in]
            y = _fn(case)(*tensors)
            assert y.creator.algorithm == ("pointwise" if route == "always" else "im2col")
            y.backward(leaf(arrays(y.shape, seed + 3), requires_grad=False))
            results.append([y.numpy()] + [t.grad.numpy() for t in tensors])
        finally:
            conv2d_module.POINTWISE = "always"
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pointwise_only_weight_grad():
    x, w = arrays((2, 4, 5, 3), 1), arrays((6, 4, 1, 1), 2)
    tw = leaf(w)
    y = conv2d(leaf(x, requires_grad=False), tw, stride=2)
    assert y.creator.algorithm == "pointwise"
    gy = arrays(y.shape, 3)
    y.backward(leaf(gy, requires_grad=False))
    _, gw_ref, _ = ref.conv2d_grad(x, w, gy, stride=(2, 2))
    np.testing.assert_allclose(tw.grad.numpy(), gw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@settings(max_examples=3)
@given(case=pointwise_cases(max_n=2, max_c=3, max_side=5), seed=st.integers(0, 2**31))
def test_pointwise_cuda_parity_and_oracle(case, seed):
    arrays_in = _inputs(case, seed)
    _check_path(case, arrays_in, "cuda")
    assert_cuda_parity(_fn(case), *arrays_in, rtol=1e-10, atol=1e-12)
    assert_matches_oracle(_fn(case), arrays_in, _oracle(case), "cuda", rtol=1e-10)


@pytest.mark.parametrize(
    "w_shape, kwargs, device, route, algorithm",
    [
        ((6, 4, 1, 1), {"stride": 2}, "cpu", "always", "pointwise"),
        ((6, 4, 1, 1), {"stride": 2}, "cpu", "auto", "im2col"),
        ((6, 4, 1, 1), {}, "cpu", "never", "im2col"),
        ((6, 4, 1, 1), {"padding": 1}, "cpu", "always", "im2col"),  # padded: not pointwise
        ((12, 2, 1, 1), {"groups": 2}, "cpu", "always", "im2col"),
        ((6, 4, 3, 3), {}, "cpu", "always", "im2col"),
        ((1, 4, 1, 1), {}, "cpu", "always", "direct"),  # a 4 x 1 channel product
        pytest.param(
            (6, 4, 1, 1), {"stride": 2}, "cuda", "auto", "pointwise", marks=pytest.mark.cuda
        ),
    ],
)
def test_pointwise_routing(monkeypatch, w_shape, kwargs, device, route, algorithm):
    monkeypatch.setattr(conv2d_module, "POINTWISE", route)
    x = leaf(arrays((2, 4, 5, 5), 1), device=device)
    w = leaf(arrays(w_shape, 2), device=device)
    assert conv2d(x, w, **kwargs).creator.algorithm == algorithm
