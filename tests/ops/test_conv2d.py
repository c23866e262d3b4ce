"""conv2d: forward vs two oracles (loops, scipy) and PyTorch, gradients, CUDA parity, errors.

All paths are tested on the same drawn shapes: ``path="direct"`` forces conv2d_direct.py for
every shape, ``path="im2col"`` forces im2col + GEMM (conv2d.DIRECT_MAX_PRODUCT) with the
CPU's joined col, ``path="batched"`` the CPU's per-sample products over a whole-batch col
(conv2d.BATCHED_MAX_DEPTH; CUDA runs im2col + GEMM),
``path="winograd"`` sends every eligible shape (3x3, stride 1, dilation 1, one group, padding
<= 2) to Winograd F(4x4, 3x3) in any dtype (conv2d.WINOGRAD = "always") and the rest to
im2col. Shapes drawn by ``winograd_cases`` always reach Winograd (checked per example);
``winograd_schedule`` picks how a Winograd pass is cut up (by blocks of tiles or by the 36
planes), so that each schedule sees every drawn shape, and ``channel_order`` the loop order
of the transforms' tile gather and scatter (winograd.CHANNEL_ORDER), drawn per example.
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
winograd_module = importlib.import_module("minicbam.kernels.winograd")

PATHS = ["direct", "im2col", "winograd", "batched"]
GEMM_PATHS = ["direct", "im2col", "batched"]  # the CPU side of CUDA parity (CUDA: im2col)


@contextlib.contextmanager
def conv_path(path):
    """Force every conv2d call inside onto one path (a context manager, not a fixture:
    hypothesis runs many examples per test function)."""
    m = conv2d_module
    saved = m.DIRECT_MAX_PRODUCT, m.WINOGRAD, m.BATCHED_MAX_DEPTH, m.POINTWISE
    m.DIRECT_MAX_PRODUCT = 10**9 if path == "direct" else 0
    m.WINOGRAD = "always" if path == "winograd" else "never"
    m.BATCHED_MAX_DEPTH = 10**9 if path == "batched" else 0
    m.POINTWISE = "never"  # 1x1 convs keep im2col's coverage (own tests elsewhere)
    try:
        yield
    finally:
        m.DIRECT_MAX_PRODUCT, m.WINOGRAD, m.BATCHED_MAX_DEPTH, m.POINTWISE = saved


@contextlib.contextmanager
def winograd_schedule(schedule):
    """Run every Winograd pass inside by blocks of tiles or by planes (winograd._by_planes)."""
    m = winograd_module
    saved = m.PLANES_FROM, m.PLANES_MAX_BYTES
    m.PLANES_FROM, m.PLANES_MAX_BYTES = (0.0, 1 << 62) if schedule == "planes" else (1e30, 0)
    try:
        yield
    finally:
        m.PLANES_FROM, m.PLANES_MAX_BYTES = saved


@contextlib.contextmanager
def channel_order(order):
    """Force the Winograd transforms' gather / scatter loop order ("inner", "outer")."""
    saved = winograd_module.CHANNEL_ORDER
    winograd_module.CHANNEL_ORDER = order
    try:
        yield
    finally:
        winograd_module.CHANNEL_ORDER = saved


ORDERS = st.sampled_from(["inner", "outer"])


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


@st.composite
def winograd_cases(draw, max_n=2, max_c=5, max_side=11):
    """conv_cases' tuple for shapes the Winograd path takes: 3x3, stride 1, dilation 1, one
    group, padding 0..2; sides 1..max_side (mostly not multiples of the 4x4 tile)."""
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, 3 - 2 * padding[0]), max_side))
    w = draw(st.integers(max(1, 3 - 2 * padding[1]), max_side))
    cin, cout = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    x_shape = (draw(st.integers(1, max_n)), cin, h, w)
    return x_shape, (cout, cin, 3, 3), draw(st.booleans()), (1, 1), padding, (1, 1), 1


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
    for path in PATHS[1:]:
        for a, b in zip(results["direct"], results[path]):
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


# ----------------------------------------------------------------------------- Winograd
# float32 Winograd F(4x4, 3x3) against the float64 oracle: the error of each output is bounded
# by WINOGRAD_F32_RTOL times the largest |w| * |x| sum of the output (the scale that float32
# rounding of the transforms is proportional to; docs/performance.md gives measured values).
WINOGRAD_F32_RTOL = 2e-5


def _scale(x, w, pads):
    """max over outputs of sum |w| |x| (the float32 error's scale)."""
    return ref.conv2d_scipy(
        np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), pads=pads
    ).max()


@pytest.mark.parametrize("schedule", ["blocks", "planes"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(case=winograd_cases(), seed=st.integers(0, 2**31), order=ORDERS)
def test_winograd_forward_matches_oracle(dtype, schedule, case, seed, order):
    _, _, _, _, padding, _, _ = case
    arrays_in = _inputs(case, seed, dtype)
    with conv_path("winograd"), winograd_schedule(schedule), channel_order(order):
        y = _fn(case)(*(leaf(a) for a in arrays_in))
    assert y.creator.algorithm == "winograd" and y.dtype == dtype
    expected = ref.conv2d(
        *(a.astype(np.float64) for a in arrays_in), pads=_pads(padding, (1, 1), (3, 3))
    )
    assert y.shape == expected.shape
    if dtype == np.float64:
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-11, atol=1e-11)
    else:
        atol = WINOGRAD_F32_RTOL * _scale(
            arrays_in[0], arrays_in[1], _pads(padding, (1, 1), (3, 3))
        )
        np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("schedule", ["blocks", "planes"])
@given(case=winograd_cases(), seed=st.integers(0, 2**31), order=ORDERS)
def test_winograd_gradcheck(schedule, case, seed, order):
    arrays_in = _inputs(case, seed, np.float64)
    with conv_path("winograd"), winograd_schedule(schedule), channel_order(order):
        assert _fn(case)(*(leaf(a) for a in arrays_in)).creator.algorithm == "winograd"
        assert_gradcheck(_fn(case), *arrays_in)


@pytest.mark.parametrize(
    "x_shape, co, padding",
    [((2, 17, 9, 10), 19, 1), ((1, 16, 4, 4), 32, 2), ((3, 20, 5, 13), 16, 0)],
)
def test_winograd_float32_by_default_matches_float64(x_shape, co, padding):
    # the default rule sends these float32 convs to Winograd; y and all gradients vs float64
    # im2col + GEMM (float64 stays there by default)
    x, w, b = arrays(x_shape, 1), arrays((co, x_shape[1], 3, 3), 2), arrays((co,), 3)
    results = {}
    for dtype in (np.float32, np.float64):
        mx, mw, mb = (leaf(a.astype(dtype)) for a in (x, w, b))
        y = conv2d(mx, mw, mb, padding=padding)
        algorithm = y.creator.algorithm  # backward releases the Function's state
        y.backward(mc.tensor(arrays(y.shape, 4).astype(dtype)))
        results[dtype] = algorithm, [t.numpy() for t in (y, mx.grad, mw.grad, mb.grad)]
    assert results[np.float32][0] == "winograd" and results[np.float64][0] == "im2col"
    pads = _pads((padding, padding), (1, 1), (3, 3))
    gy64 = arrays(results[np.float64][1][0].shape, 4)
    scales = [
        _scale(x, w, pads),
        _scale(gy64, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), tuple(2 - p for p in pads)),
        np.abs(gy64).sum() * np.abs(x).max(),
        1.0,
    ]
    for got, want, scale in zip(results[np.float32][1], results[np.float64][1], scales):
        np.testing.assert_allclose(got, want, rtol=0, atol=WINOGRAD_F32_RTOL * scale)


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, dtype, algorithm",
    [
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 1}, np.float32, "winograd"),
        ((2, 16, 8, 8), (24, 16, 3, 3), {"padding": "same"}, np.float32, "winograd"),
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 2}, np.float32, "winograd"),
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 1}, np.float64, "im2col"),  # exact path
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 3}, np.float32, "im2col"),
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 1, "stride": 2}, np.float32, "im2col"),
        ((2, 16, 8, 8), (16, 16, 3, 3), {"padding": 2, "dilation": 2}, np.float32, "im2col"),
        ((2, 32, 8, 8), (32, 16, 3, 3), {"padding": 1, "groups": 2}, np.float32, "im2col"),
        ((2, 16, 8, 8), (16, 16, 1, 1), {}, np.float32, "im2col"),  # CPU: pointwise on CUDA
        ((2, 16, 8, 8), (16, 16, 3, 1), {"padding": 1}, np.float32, "im2col"),
        ((2, 15, 8, 8), (16, 15, 3, 3), {"padding": 1}, np.float32, "im2col"),  # thin GEMMs
        ((2, 2, 8, 8), (1, 2, 3, 3), {"padding": 1}, np.float32, "direct"),
        ((2, 1, 8, 8), (32, 1, 3, 3), {"padding": 1}, np.float32, "batched"),  # a first layer
        ((2, 1, 8, 8), (32, 1, 4, 4), {"padding": 1}, np.float64, "batched"),  # depth 16
        ((2, 2, 8, 8), (8, 2, 3, 3), {"padding": 1}, np.float32, "im2col"),  # depth 18
        ((2, 4, 8, 8), (12, 2, 2, 2), {"groups": 2}, np.float32, "batched"),  # per group 8
    ],
)
def test_algorithm_rule(x_shape, w_shape, kwargs, dtype, algorithm):
    x, w = leaf(arrays(x_shape, 1, dtype=dtype)), leaf(arrays(w_shape, 2, dtype=dtype))
    assert conv2d(x, w, **kwargs).creator.algorithm == algorithm


@st.composite
def batched_threshold_cases(draw):
    """conv_cases' tuple for depths Cg*KH*KW just under, at and over BATCHED_MAX_DEPTH, more
    output channels than DIRECT_MAX_PRODUCT allows per input channel, batch 1 to 3 and odd
    or even sides (H*W odd included)."""
    limit = conv2d_module.BATCHED_MAX_DEPTH
    kh, kw = draw(st.sampled_from([(1, 1), (2, 2), (3, 3), (4, 4), (3, 2), (1, 5), (2, 3)]))
    depth = draw(st.sampled_from([limit - 1, limit, limit + 1, limit + 2]))
    cg = max(1, depth // (kh * kw))
    groups = draw(st.integers(1, 2))
    cout = groups * draw(st.integers(conv2d_module.DIRECT_MAX_PRODUCT // cg + 1, 10))
    pad = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    h = draw(st.integers(max(1, kh - 2 * pad[0]), 7))
    w = draw(st.integers(max(1, kw - 2 * pad[1]), 7))
    x_shape = (draw(st.integers(1, 3)), groups * cg, h, w)
    return x_shape, (cout, cg, kh, kw), draw(st.booleans()), (1, 1), pad, (1, 1), groups


@settings(max_examples=25)
@given(case=batched_threshold_cases(), seed=st.integers(0, 2**31))
def test_batched_route_threshold(case, seed):
    """The default rule around BATCHED_MAX_DEPTH: the batched path at or under it (kernels
    larger than 1x1), im2col + GEMM (joined col) over it, both against the loop oracle (values and all gradients)."""
    w_shape = case[1]
    depth = w_shape[1] * w_shape[2] * w_shape[3]
    arrays_in = _inputs(case, seed, np.float64)
    leaves = [leaf(a) for a in arrays_in]
    y = _fn(case)(*leaves)
    small = depth <= conv2d_module.BATCHED_MAX_DEPTH and w_shape[2] * w_shape[3] > 1
    want = "batched" if small else "im2col"
    assert y.creator.algorithm == want
    tol = {"rtol": 1e-12, "atol": 1e-12}
    assert_matches_oracle(_fn(case), arrays_in, conv_oracle(case), "cpu", **tol)
    y32 = _fn(case)(*(leaf(a.astype(np.float32), requires_grad=False) for a in arrays_in))
    expected = ref.conv2d(*arrays_in, **_oracle_kwargs(case))
    np.testing.assert_allclose(y32.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_winograd_transforms_match_their_matrices():
    # the written-out 1-D transforms are B^T, A^T and A (columns = images of unit vectors)
    k = winograd_module._matrices(np.float64)["k"]
    wm = winograd_module
    for fn, matrix in ((wm._bt6, wm.BT), (wm._at6, wm.AT), (wm._a4, wm.AT.T)):
        columns = [fn(*np.eye(matrix.shape[1])[j], k) for j in range(matrix.shape[1])]
        np.testing.assert_array_equal(np.array(columns).T, matrix)
    # F(4x4, 3x3) in 1-D: A^T [(G g) * (B^T d)] is the valid correlation of d (6) with g (3)
    d, g = arrays((6,), 1), arrays((3,), 2)
    expected = [d[i : i + 3] @ g for i in range(4)]
    np.testing.assert_allclose(wm.AT @ ((wm.G @ g) * (wm.BT @ d)), expected, rtol=1e-12)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    side=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    pads=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    seed=st.integers(0, 2**31),
)
def test_winograd_tile_loop_orders_move_the_same_values(n, c, side, pads, seed):
    # the transforms' two gather / scatter loop orders give bit-identical V and y, tile by
    # tile, on maps smaller and larger than the channel count and on partial edge tiles
    wm = winograd_module
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + side).astype(np.float32)
    OH, OW = side[0] + 2 * pads[0] - 2, side[1] + 2 * pads[1] - 2
    if OH < 1 or OW < 1:
        return
    th, tw, P = wm._tiles(OH, OW, n)
    k = wm._matrices(np.float32)["k"]
    M = rng.standard_normal((6, 6, P + 1, c)).astype(np.float32)
    scratch = [np.empty((6, 6, c), np.float32) for _ in range(2)]
    Vs, ys = [], []
    for inner in (True, False):
        V = np.full((6, 6, P + 1, c), np.nan, np.float32)
        wm._input_transform(V, x, 0, P, 0, th, tw, pads[0], pads[1], k, *scratch, inner)
        y = np.full((n, c, OH, OW), np.nan, np.float32)
        ytile = np.empty((4, 4, c), np.float32)
        wm._output_transform(y, M, 0, P, 0, th, tw, k, ytile, scratch[1], inner)
        Vs.append(V[:, :, :P])
        ys.append(y)
    np.testing.assert_array_equal(Vs[0], Vs[1])
    np.testing.assert_array_equal(ys[0], ys[1])
    assert not np.isnan(Vs[0]).any() and not np.isnan(ys[0]).any()  # every value written


def test_winograd_channel_order_rule():
    # the smaller stride goes innermost: channels when a plane is smaller than the channel
    # count (the deep layers), the rows otherwise; the tests' hook overrides it
    rule = winograd_module.channels_innermost
    assert rule(16, 512) and rule(64, 256) and rule(16, 32)
    assert not rule(1024, 64) and not rule(256, 128) and not rule(64, 64)
    with channel_order("outer"):
        assert not rule(16, 512)
    with channel_order("inner"):
        assert rule(1024, 64)


def test_winograd_empty_batch():
    mx, mw = leaf(np.zeros((0, 3, 5, 5))), leaf(arrays((4, 3, 3, 3), 1))
    with conv_path("winograd"):
        y = conv2d(mx, mw, padding=1)
        assert y.creator.algorithm == "winograd" and y.shape == (0, 4, 5, 5)
        y.sum().backward()
    assert mx.grad.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(mw.grad.numpy(), np.zeros((4, 3, 3, 3)))


@pytest.mark.parametrize("pooled_from", [0, winograd_module.MIN_POOLED_FLOPS])
def test_winograd_blocks_of_tiles(monkeypatch, pooled_from):
    # blocks of 1 and 3 tiles (many tasks, a remainder block) give the same result, on the
    # task pool (pieces and weight-gradient ranges per worker) and on the calling thread
    monkeypatch.setattr(winograd_module, "MIN_POOLED_FLOPS", pooled_from)
    monkeypatch.setattr(winograd_module, "PLANES_FROM", 1e30)
    case = ((3, 4, 9, 6), (5, 4, 3, 3), True, (1, 1), (1, 1), (1, 1), 1)
    arrays_in = _inputs(case, 9, np.float64)
    expected = ref.conv2d(*arrays_in, pads=(1, 1, 1, 1))
    for size in (1, 3):
        monkeypatch.setattr(winograd_module, "MIN_BLOCK", size)
        monkeypatch.setattr(winograd_module, "MAX_BLOCK", size)
        with conv_path("winograd"):
            y = _fn(case)(*(leaf(a) for a in arrays_in))
            assert y.creator.algorithm == "winograd"
            np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
            assert_gradcheck(_fn(case), *arrays_in)


@pytest.mark.parametrize("n", [1, 3])
def test_winograd_by_planes_on_the_pool(monkeypatch, n):
    # by planes with the task pool forced on: tile ranges and plane pieces per worker (the
    # last ones short: 13 or 39 tiles, 36 planes over the workers), against the oracle
    monkeypatch.setattr(winograd_module, "MIN_POOLED_FLOPS", 0)
    case = ((n, 3, 13, 11), (4, 3, 3, 3), True, (1, 1), (1, 2), (1, 1), 1)
    arrays_in = _inputs(case, 4, np.float64)
    expected = ref.conv2d(*arrays_in, pads=(1, 1, 2, 2))
    with conv_path("winograd"), winograd_schedule("planes"):
        y = _fn(case)(*(leaf(a) for a in arrays_in))
        assert y.creator.algorithm == "winograd"
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
        assert_gradcheck(_fn(case), *arrays_in)


def test_winograd_schedule_rule():
    # the deep layers of a ResNet at batch 64 go by planes, the wide early ones by blocks,
    # and by planes never takes more than PLANES_MAX_BYTES of V + M
    wm = winograd_module
    assert not wm._by_planes(64 * 8 * 8, 64, 64, 4)  # 64 channels at 32x32: 4,096 tiles
    assert wm._by_planes(64 * 4 * 4, 128, 128, 4)  # 128 at 16x16
    assert wm._by_planes(64, 512, 512, 4)  # 512 at 4x4
    assert not wm._by_planes(4096, 512, 512, 4)  # batch 4096 at 4x4: V + M too large


@pytest.mark.cuda
@pytest.mark.parametrize("path", GEMM_PATHS)
@settings(max_examples=3)
@given(case=conv_cases(max_n=2, max_c=4, max_side=6), seed=st.integers(0, 2**31))
def test_cuda_parity(path, case, seed):
    arrays_in = _inputs(case, seed, np.float64)
    with conv_path(path):
        assert_cuda_parity(_fn(case), *arrays_in, rtol=1e-10, atol=1e-12)
        assert_matches_oracle(_fn(case), arrays_in, conv_oracle(case), "cuda", rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize("path", GEMM_PATHS)
def test_cuda_parity_float32_groups(path):
    case = ((2, 4, 5, 6), (4, 2, 3, 3), True, (1, 2), (1, 1), (1, 1), 2)
    with conv_path(path):
        assert_cuda_parity(_fn(case), *_inputs(case, 3, np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_parity_winograd_float32():
    # the CPU runs Winograd, CUDA im2col + GEMM
    case = ((2, 3, 6, 5), (2, 3, 3, 3), True, (1, 1), (1, 1), (1, 1), 1)
    with conv_path("winograd"):
        assert_cuda_parity(_fn(case), *_inputs(case, 3, np.float32), rtol=1e-4, atol=1e-4)


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
    with pytest.raises(ValueError, match=r"conv2d.*bias.*\(2,\).*\(1, 2\)"):
        conv2d(_t((1, 3, 5, 5)), _t((2, 3, 3, 3)), _t((1, 2)))  # the right size, not shape


@pytest.mark.cuda
def test_device_mismatch():
    x = mc.tensor(np.zeros((1, 3, 5, 5), np.float32), device="cuda")
    with pytest.raises(RuntimeError, match=r"conv2d.*cuda.*cpu|conv2d.*cpu.*cuda"):
        conv2d(x, _t((2, 3, 3, 3)))
