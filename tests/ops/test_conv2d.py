"""conv2d: forward vs two oracles (loops, scipy) and PyTorch, gradients, CUDA parity, errors.

Both paths are tested on the same drawn shapes: ``path="direct"`` forces conv2d_direct.py for
every shape, ``path="im2col"`` forces im2col + GEMM (conv2d.DIRECT_MAX_PRODUCT).
"""

import contextlib
import importlib

import numpy as np
import pytest
import reference_conv as ref
from helpers import arrays, assert_cuda_parity, assert_gradcheck, assert_matches_oracle, leaf
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.conv2d import conv2d

# the module itself: minicbam.ops's attribute of that name is the function
conv2d_module = importlib.import_module("minicbam.ops.conv2d")

PATHS = ["direct", "im2col"]


@contextlib.contextmanager
def conv_path(path):
    """Force every conv2d call inside onto one path (a context manager, not a fixture:
    hypothesis runs many examples per test function)."""
    saved = conv2d_module.DIRECT_MAX_PRODUCT
    conv2d_module.DIRECT_MAX_PRODUCT = {"direct": 10**9, "im2col": 0}[path]
    try:
        yield
    finally:
        conv2d_module.DIRECT_MAX_PRODUCT = saved


@st.composite
def conv_cases(draw, max_n=2, max_c=4, max_side=7, max_co=6):
    """(x shape, w shape, has bias, stride, padding, dilation, groups) with a valid geometry.

    The channel structure is drawn, not left to chance: groups 1..3, input channels per group
    up to max_c / groups and output channels per group up to max_co / groups (so grouped
    convolutions with several output channels per group come up, as do depthwise ones).
    Padding is a pair, or ``'same'`` (stride 1) with kernels up to 4, even ones included."""
    groups = draw(st.integers(1, min(3, max_c)))
    cin = groups * draw(st.integers(1, max(1, max_c // groups)))
    cout = groups * draw(st.integers(1, max(1, max_co // groups)))
    same = draw(st.booleans()) and draw(st.booleans())
    kh, kw = draw(st.integers(1, 4 if same else 3)), draw(st.integers(1, 4 if same else 3))
    stride = (1, 1) if same else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = "same" if same else (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # the input must cover the dilated kernel once padded
    pads = _pads(padding, dilation, (kh, kw))
    h_min = max(1, dilation[0] * (kh - 1) + 1 - pads[0] - pads[1])
    w_min = max(1, dilation[1] * (kw - 1) + 1 - pads[2] - pads[3])
    h = draw(st.integers(h_min, max(h_min, max_side)))
    w = draw(st.integers(w_min, max(w_min, max_side)))
    x_shape = (draw(st.integers(1, max_n)), cin, h, w)
    w_shape = (cout, cin // groups, kh, kw)
    return x_shape, w_shape, draw(st.booleans()), stride, padding, dilation, groups


def _pads(padding, dilation, kernel):
    """(top, bottom, left, right) for the oracles; 'same' as PyTorch defines it: total
    d (k - 1), the odd one at the bottom/right."""
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    return (padding[0], padding[0], padding[1], padding[1])


def _oracle_kwargs(case):
    _, w_shape, _, stride, padding, dilation, groups = case
    pads = _pads(padding, dilation, w_shape[2:])
    return {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups}


def conv_oracle(case):
    """(y, [gx, gw(, gb)]) from the loop oracle, for assert_matches_oracle."""
    kwargs = _oracle_kwargs(case)

    def oracle(x, w, *rest):
        *b, gy = rest
        gx, gw, gb = ref.conv2d_grad(x, w, gy, **kwargs)
        return ref.conv2d(x, w, *b, **kwargs), [gx, gw] + ([gb] if b else [])

    return oracle


def _inputs(case, seed, dtype):
    x_shape, w_shape, has_bias, *_ = case
    x, w = arrays(x_shape, seed, dtype=dtype), arrays(w_shape, seed + 1, dtype=dtype)
    return (x, w, arrays((w_shape[0],), seed + 2, dtype=dtype)) if has_bias else (x, w)


def _fn(case):
    _, _, _, stride, padding, dilation, groups = case
    return lambda x, w, b=None: conv2d(x, w, b, stride, padding, dilation, groups)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=conv_cases(), seed=st.integers(0, 2**31))
def test_forward_matches_oracles(dtype, path, case, seed):
    arrays_in = _inputs(case, seed, dtype)
    with conv_path(path):
        y = _fn(case)(*(leaf(a, requires_grad=False) for a in arrays_in))
    kwargs = _oracle_kwargs(case)
    expected = ref.conv2d(*arrays_in, **kwargs)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(y.numpy(), expected, **tol)
    np.testing.assert_allclose(y.numpy(), ref.conv2d_scipy(*arrays_in, **kwargs), **tol)
    if dtype == np.float64:  # all three gradients against the loop oracle's backward
        with conv_path(path):
            assert_matches_oracle(_fn(case), arrays_in, conv_oracle(case), "cpu", **tol)


@pytest.mark.parametrize("path", PATHS)
@given(case=conv_cases(), seed=st.integers(0, 2**31))
def test_gradcheck(path, case, seed):
    with conv_path(path):
        assert_gradcheck(_fn(case), *_inputs(case, seed, np.float64))


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck_four_groups(path):
    case = ((2, 4, 5, 4), (4, 1, 3, 2), True, (2, 1), (1, 2), (1, 2), 4)
    with conv_path(path):
        assert_gradcheck(_fn(case), *_inputs(case, 7, np.float64))


def _created_by_direct(y):
    return y.creator.direct


@pytest.mark.parametrize(
    "x_shape, w_shape, groups, direct",
    [
        ((2, 2, 9, 9), (1, 2, 7, 7), 1, True),  # CBAM's spatial attention conv
        ((2, 4, 5, 5), (2, 4, 3, 3), 1, True),  # 4 * 2 = 8
        ((2, 3, 5, 5), (3, 3, 3, 3), 1, False),  # 9
        ((2, 8, 5, 5), (8, 2, 3, 3), 4, True),  # per group 2 * 2
        ((2, 6, 5, 5), (6, 1, 3, 3), 6, True),  # depthwise
    ],
)
def test_path_rule(x_shape, w_shape, groups, direct):
    x, w = leaf(arrays(x_shape, 1)), leaf(arrays(w_shape, 2))
    assert _created_by_direct(conv2d(x, w, groups=groups)) is direct
    with conv_path("im2col"):
        assert not _created_by_direct(conv2d(x, w, groups=groups))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spatial_attention_conv_both_paths(dtype):
    # 2 -> 1 channels, 7x7, padding 3: the direct path vs the oracle and vs im2col
    x, w = arrays((3, 2, 10, 12), 4, dtype=dtype), arrays((1, 2, 7, 7), 5, dtype=dtype)
    expected = ref.conv2d(x, w, pads=(3, 3, 3, 3))
    gy = arrays((3, 1, 10, 12), 6, dtype=dtype)
    results = {}
    for path in PATHS:
        mx, mw = leaf(x), leaf(w)
        with conv_path(path):
            y = conv2d(mx, mw, padding=3)
            y.backward(mc.tensor(gy))
        results[path] = (y.numpy(), mx.grad.numpy(), mw.grad.numpy())
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(results["direct"][0], expected, **tol)
    for a, b in zip(results["direct"], results["im2col"]):
        np.testing.assert_allclose(a, b, **tol)
    assert_gradcheck(lambda x, w: conv2d(x, w, padding=3), x, w)


def test_direct_weight_grad_empty_batch():
    mx, mw = leaf(np.zeros((0, 2, 5, 5))), leaf(arrays((1, 2, 3, 3), 1))
    conv2d(mx, mw, padding=1).sum().backward()
    assert mx.grad.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(mw.grad.numpy(), np.zeros((1, 2, 3, 3)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padding", ["same", "valid", 0, (2, 1)])
def test_matches_torch(padding, path):
    torch = pytest.importorskip("torch")
    x, w, b, gy_seed = arrays((2, 4, 7, 6), 1), arrays((6, 2, 2, 3), 2), arrays((6,), 3), 4
    kwargs = {"padding": padding, "dilation": (2, 1), "groups": 2}
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kwargs)
    gy = arrays(tuple(ty.shape), gy_seed)
    ty.backward(torch.tensor(gy))
    mx, mw, mb = leaf(x), leaf(w), leaf(b)
    with conv_path(path):
        y = conv2d(mx, mw, mb, **kwargs)
        y.backward(mc.tensor(gy, dtype=np.float64))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for m, t in ((mx, tx), (mw, tw), (mb, tb)):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [1, 900])
def test_chunked_batch(monkeypatch, budget):
    # col holds 2*3*3 x 5*5 = 450 elements per sample: chunks of 1, then of 2 plus a remainder
    monkeypatch.setattr(conv2d_module, "CPU_COL_BUDGET", budget)
    monkeypatch.setattr(conv2d_module, "DIRECT_MAX_PRODUCT", 0)  # chunks are im2col's
    case = ((3, 2, 5, 5), (4, 2, 3, 3), True, (1, 1), (1, 1), (1, 1), 1)
    arrays_in = _inputs(case, 5, np.float64)
    y = _fn(case)(*(leaf(a, requires_grad=False) for a in arrays_in))
    np.testing.assert_allclose(y.numpy(), ref.conv2d(*arrays_in, pads=(1, 1, 1, 1)), rtol=1e-12)
    assert_gradcheck(_fn(case), *arrays_in)


@pytest.mark.parametrize("budget", [1, 2 * 4 * 9 * 25, 10**6])
def test_cpu_tasks_joined_chunks_with_groups(monkeypatch, budget):
    # CPU tasks of 1 sample, of 2 samples (joined col, gathered gy), and the whole batch
    monkeypatch.setattr(conv2d_module, "CPU_COL_BUDGET", budget)
    monkeypatch.setattr(conv2d_module, "DIRECT_MAX_PRODUCT", 0)  # chunks are im2col's
    case = ((5, 4, 5, 5), (6, 2, 3, 3), True, (1, 1), (1, 1), (1, 1), 2)
    arrays_in = _inputs(case, 7, np.float64)
    y = _fn(case)(*(leaf(a, requires_grad=False) for a in arrays_in))
    expected = ref.conv2d(*arrays_in, pads=(1, 1, 1, 1), groups=2)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    assert_gradcheck(_fn(case), *arrays_in)


@pytest.mark.parametrize("path", PATHS)
def test_only_weight_grad_and_no_bias_grad(path):
    x, w = arrays((2, 3, 5, 5), 1), arrays((2, 3, 3, 3), 2)
    mx, mw, mb = leaf(x, requires_grad=False), leaf(w), leaf(arrays((2,), 3), requires_grad=False)
    with conv_path(path):
        conv2d(mx, mw, mb, padding=1).sum().backward()
    assert mx.grad is None and mb.grad is None and mw.grad.shape == w.shape


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=3)
@given(case=conv_cases(max_n=2, max_c=4, max_side=6), seed=st.integers(0, 2**31))
def test_cuda_parity(path, case, seed):
    arrays_in = _inputs(case, seed, np.float64)
    with conv_path(path):
        assert_cuda_parity(_fn(case), *arrays_in, rtol=1e-10, atol=1e-12)
        assert_matches_oracle(_fn(case), arrays_in, conv_oracle(case), "cuda", rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
def test_cuda_parity_float32_groups(path):
    case = ((2, 4, 5, 6), (4, 2, 3, 3), True, (1, 2), (1, 1), (1, 1), 2)
    with conv_path(path):
        assert_cuda_parity(_fn(case), *_inputs(case, 3, np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_parity_spatial_attention_conv():
    # the default rule (direct), 2 -> 1 channels, 5x5, padding 2, float32
    case = ((2, 2, 6, 5), (1, 2, 5, 5), False, (1, 1), (2, 2), (1, 1), 1)
    assert_cuda_parity(_fn(case), *_inputs(case, 8, np.float32), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors
def _t(shape, dtype=np.float32):
    return mc.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, exc, words",
    [
        ((3, 8, 8), (4, 3, 3, 3), {}, ValueError, ["conv2d", "4 dimensions", "(3, 8, 8)"]),
        ((1, 3, 8, 8), (4, 3, 3), {}, ValueError, ["conv2d", "weight", "(4, 3, 3)"]),
        ((1, 3, 8, 8), (4, 2, 3, 3), {}, ValueError, ["conv2d", "3 channels", "(4, 2, 3, 3)"]),
        ((1, 4, 8, 8), (6, 1, 3, 3), {"groups": 4}, ValueError, ["conv2d", "groups=4", "6"]),
        ((1, 4, 8, 8), (4, 4, 3, 3), {"groups": 0}, ValueError, ["conv2d", "groups"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": 0}, ValueError, ["conv2d", "stride", "(0, 0)"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"dilation": (1, -1)}, ValueError, ["conv2d", "dilation"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"padding": -1}, ValueError, ["conv2d", "padding"]),
        ((1, 3, 2, 8), (4, 3, 3, 3), {}, ValueError, ["conv2d", "larger", "(1, 3, 2, 8)"]),
        ((1, 3, 4, 4), (4, 3, 3, 3), {"dilation": 2}, ValueError, ["conv2d", "(5, 5)"]),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"padding": "full"}, ValueError, ["conv2d", "'full'"]),
        (
            (1, 3, 8, 8),
            (4, 3, 3, 3),
            {"padding": "same", "stride": 2},
            ValueError,
            ["conv2d", "same", "stride"],
        ),
        ((1, 3, 8, 8), (4, 3, 3, 3), {"stride": (1, 2, 3)}, ValueError, ["conv2d", "stride"]),
    ],
)
def test_errors(x_shape, w_shape, kwargs, exc, words):
    with pytest.raises(exc) as info:
        conv2d(_t(x_shape), _t(w_shape), **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_dtype_mismatch():
    with pytest.raises(TypeError, match=r"conv2d.*float32.*float64"):
        conv2d(_t((1, 3, 5, 5)), _t((2, 3, 3, 3), np.float64))
    with pytest.raises(TypeError, match=r"conv2d.*bias float64"):
        conv2d(_t((1, 3, 5, 5)), _t((2, 3, 3, 3)), _t((2,), np.float64))


def test_bias_shape():
    with pytest.raises(ValueError, match=r"conv2d.*bias.*\(2,\).*\(3,\)"):
        conv2d(_t((1, 3, 5, 5)), _t((2, 3, 3, 3)), _t((3,)))


@pytest.mark.cuda
def test_device_mismatch():
    x = mc.tensor(np.zeros((1, 3, 5, 5), np.float32), device="cuda")
    with pytest.raises(RuntimeError, match=r"conv2d.*cuda.*cpu|conv2d.*cpu.*cuda"):
        conv2d(x, _t((2, 3, 3, 3)))
