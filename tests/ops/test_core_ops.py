"""The core ops (binary, unary, reduce, max, var, permute, reshape, getitem, cat, expand,
cast, move) and the autodiff engine: forward vs the oracle, float64 gradient checks on
hypothesis-drawn shapes, CUDA parity, and the engine's graph rules."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    arrays,
    assert_cuda_parity,
    assert_gradcheck,
    distinct_or_tied,
    leaf,
    shapes,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import basic_indices, mutually_broadcastable_shapes

import minicbam as mc

SEED = st.integers(0, 2**32 - 1)
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 2e-6, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


def away_from(x, points, margin=0.05):
    """``x`` with every value within ``margin`` of a kink pushed ``2 * margin`` away."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < margin
        x[near] = p + 2 * margin * np.where(x[near] >= p, 1, -1)
    return x


def distinct(shape, seed, dtype=np.float64):
    """Values with no ties (a shuffled grid), so max/amax have one winner per row."""
    n = int(np.prod(shape))
    values = np.random.default_rng(seed).permutation(n) * (4.0 / max(n, 1)) - 2.0
    return values.reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------- unary
UNARY_DOMAINS = {  # (low, high, kinks to avoid)
    "neg": (-2, 2, ()),
    "exp": (-2, 2, ()),
    "log": (0.2, 3, ()),
    "sqrt": (0.2, 3, ()),
    "abs": (-2, 2, (0.0,)),
    "relu": (-2, 2, (0.0,)),
    "sigmoid": (-4, 4, ()),
    "tanh": (-2, 2, ()),
}


def _unary_input(name, shape, seed, dtype=np.float64):
    low, high, kinks = UNARY_DOMAINS[name]
    return away_from(arrays(shape, seed, low, high), kinks).astype(dtype)


@pytest.mark.parametrize("name", UNARY_DOMAINS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes(0, 3, 1, 4), seed=SEED)
def test_unary_forward(name, dtype, shape, seed):
    x = _unary_input(name, shape, seed, dtype)
    y = getattr(mc.ops, name)(leaf(x, False))
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(
        y.numpy(),
        ref.unary(name, x),
        rtol=2e-6 if dtype == np.float32 else 1e-14,
        atol=1e-7 if dtype == np.float32 else 1e-15,
    )


@pytest.mark.parametrize("name", UNARY_DOMAINS)
@given(shape=shapes(0, 3, 1, 4), seed=SEED)
def test_unary_gradcheck(name, shape, seed):
    assert_gradcheck(getattr(mc.ops, name), _unary_input(name, shape, seed))


@given(
    shape=shapes(1, 3, 1, 4),
    seed=SEED,
    lo=st.floats(-1.5, 0.0),
    width=st.floats(0.2, 2),
    which=st.sampled_from(["both", "min", "max"]),
)
def test_clamp(shape, seed, lo, width, which):
    hi = lo + width
    lo_, hi_ = (lo if which != "max" else None), (hi if which != "min" else None)
    x = away_from(arrays(shape, seed), [lo, hi], margin=1e-3)
    y = mc.tensor(x, dtype=np.float64).clamp(lo_, hi_)
    np.testing.assert_array_equal(y.numpy(), ref.clamp(x, lo_, hi_))
    assert_gradcheck(lambda t: t.clamp(lo_, hi_), x)


@pytest.mark.parametrize("p", [2, 3.0, 0.5, -1.5])
@given(shape=shapes(1, 3, 1, 4), seed=SEED)
def test_pow(p, shape, seed):
    x = arrays(shape, seed, 0.3, 2.0)
    np.testing.assert_allclose((leaf(x, False) ** p).numpy(), ref.power(x, p), rtol=1e-14)
    assert_gradcheck(lambda t: t**p, x)


def test_pow_of_negative_base_with_integer_exponent():
    x = np.array([-2.0, -0.5, 1.5])
    np.testing.assert_allclose((leaf(x, False) ** 3).numpy(), x**3)
    assert_gradcheck(lambda t: t**3, x)


# ----------------------------------------------------------------------------- binary
BINARY = ["add", "sub", "mul", "div"]


def _binary_inputs(name, shapes_pair, seed, dtype=np.float64):
    a = arrays(shapes_pair[0], seed, dtype=dtype)
    b = arrays(shapes_pair[1], seed + 1, dtype=dtype)
    if name == "div":
        b = away_from(b, [0.0], margin=0.3)
    return a, b


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dtype", DTYPES)
@given(bs=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4), seed=SEED)
def test_binary_forward_broadcasts(name, dtype, bs, seed):
    a, b = _binary_inputs(name, bs.input_shapes, seed, dtype)
    y = getattr(mc.ops, name)(leaf(a, False), leaf(b, False))
    assert y.shape == bs.result_shape and y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ref.binary(name, a, b), **TOL[dtype])


@pytest.mark.parametrize("name", BINARY)
@given(bs=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), seed=SEED)
def test_binary_gradcheck(name, bs, seed):
    a, b = _binary_inputs(name, bs.input_shapes, seed)
    assert_gradcheck(getattr(mc.ops, name), a, b)


def test_python_scalars_on_either_side():
    x = np.array([1.0, -2.0, 4.0])
    t = leaf(x)
    y = 2.0 - t * 3 + 1 / t + t / 4 - (-t) + t**2
    np.testing.assert_allclose(y.numpy(), 2 - x * 3 + 1 / x + x / 4 + x + x**2)
    y.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), -3 - 1 / x**2 + 0.25 + 1 + 2 * x)


def test_dtype_promotion():
    f32, f64 = mc.ones(2, dtype=mc.float32), mc.ones(2, dtype=mc.float64)
    assert (f32 + f64).dtype == mc.float64
    assert (f64 * f32).dtype == mc.float64
    assert (f32 * 2.5).dtype == mc.float32  # Python scalars keep the tensor's dtype
    assert (mc.tensor(np.array([1, 2])) * 0.5).dtype == mc.float32
    np.testing.assert_allclose((mc.tensor(np.array([1, 2])) * 0.5).numpy(), [0.5, 1.0])
    a = mc.tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    b = mc.tensor(np.ones(2), dtype=mc.float64, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == mc.float32 and b.grad.dtype == mc.float64


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons(op):
    a = np.array([[1.0, 2.0, 3.0]])
    b = np.array([[2.0], [2.0]])
    got = mc.ops.compare(op, mc.tensor(a), mc.tensor(b))
    want = getattr(
        np,
        {
            "eq": "equal",
            "ne": "not_equal",
            "lt": "less",
            "le": "less_equal",
            "gt": "greater",
            "ge": "greater_equal",
        }[op],
    )(a, b)
    assert got.dtype == mc.bool_ and not got.requires_grad
    np.testing.assert_array_equal(got.numpy(), want)


def test_incompatible_shapes_error():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\), \(4,\) cannot be broadcast"):
        mc.ones(2, 3) + mc.ones(4)


# ----------------------------------------------------------------------------- reductions
@st.composite
def shape_dims(draw, min_dims=1, max_dims=4, max_side=4, single=False):
    shape = draw(shapes(min_dims, max_dims, 1, max_side))
    ndim = len(shape)
    if single:
        return shape, draw(st.integers(-ndim, ndim - 1))
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return shape, None
    if kind == "int":
        return shape, draw(st.integers(-ndim, ndim - 1))
    dims = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return shape, tuple(d - ndim if draw(st.booleans()) else d for d in dims)


REDUCTIONS = {
    "sum": ref.reduce_sum,
    "mean": ref.reduce_mean,
    "var": ref.reduce_var,
    "amax": ref.reduce_amax,
}


def _reduce(name, t, dim, keepdim):
    if name == "var":
        return t.var(dim, keepdim=keepdim)
    return getattr(t, name)(dim, keepdim=keepdim)


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(sd=shape_dims(), keepdim=st.booleans(), seed=SEED)
def test_reduction_forward(name, dtype, sd, keepdim, seed):
    shape, dim = sd
    x = distinct(shape, seed, dtype)
    y = _reduce(name, leaf(x, False), dim, keepdim)
    want = REDUCTIONS[name](x, dim, keepdim)
    assert y.shape == want.shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", REDUCTIONS)
@given(sd=shape_dims(max_dims=3), keepdim=st.booleans(), seed=SEED)
def test_reduction_gradcheck(name, sd, keepdim, seed):
    shape, dim = sd
    x = distinct(shape, seed)
    if name == "var":
        dims = range(len(shape)) if dim is None else np.atleast_1d(dim)
        assume(np.prod([shape[d] for d in dims]) > 1)  # var over one element is inf
    assert_gradcheck(lambda t: _reduce(name, t, dim, keepdim), x)


@st.composite
def column_block_cases(draw):
    """(shape, dims) for a sum over leading dims whose kept size J is drawn by its structure:
    whole blocks of 256 columns (the CPU column-sum task) plus a remainder, so that partial
    last blocks (J > 256, J % 256 != 0) come up, as do J < 256 and exact multiples."""
    blocks = draw(st.integers(0, 2))
    remainder = draw(st.sampled_from([0, 1, 7, 129, 255])) if blocks else draw(st.integers(1, 40))
    J = 256 * blocks + remainder
    kept = (J,) if J % 2 or draw(st.booleans()) else (2, J // 2)
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    return lead + kept, tuple(range(len(lead)))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=column_block_cases(), keepdim=st.booleans(), seed=SEED)
def test_sum_over_leading_dims_column_blocks(dtype, case, keepdim, seed):
    shape, dims = case
    x = arrays(shape, seed, dtype=dtype)
    want = x.astype(np.float64).sum(axis=dims, keepdims=keepdim)
    np.testing.assert_allclose(
        leaf(x, False).sum(dims, keepdim=keepdim).numpy(), want, **TOL[dtype]
    )
    # sum_to (broadcast backward) reduces leading dims with the same kernel
    t = leaf(x[(0,) * len(dims)].astype(np.float64))
    (t.expand(*shape) * mc.tensor(x.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), x.astype(np.float64).sum(axis=dims), rtol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(2, 300), (3, 1, 7), (1, 2, 2, 9)])
def test_sum_over_leading_dims_cuda_matches_numpy(shape):
    x = arrays(shape, 5)
    for dims in [(0,), tuple(range(len(shape) - 1))]:
        y = leaf(x, device="cuda").sum(dims)
        np.testing.assert_allclose(y.numpy(), x.sum(axis=dims), rtol=1e-12)


def test_amax_ties_share_the_gradient():
    x = leaf(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]))
    x.amax(1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0.5, 0.5], [1, 0, 0]])


def test_var_correction():
    x = arrays((3, 5), 4)
    np.testing.assert_allclose(
        mc.tensor(x).var(1, unbiased=False).numpy(), ref.reduce_var(x, 1, correction=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        mc.tensor(x, dtype=np.float64).var(0, correction=2).numpy(),
        ref.reduce_var(x, 0, correction=2),
        rtol=1e-12,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(sd=shape_dims(single=True), keepdim=st.booleans(), ties=st.booleans(), seed=SEED)
def test_max_with_indices(dtype, sd, keepdim, ties, seed):
    # with ties: the index, and so the gradient, of the FIRST maximum (as PyTorch)
    shape, dim = sd
    x = distinct_or_tied(shape, seed, ties, dtype)
    t = leaf(x.astype(np.float64))
    values, indices = t.max(dim, keepdim)
    want_v, want_i = ref.max_with_index(x, dim, keepdim)
    np.testing.assert_allclose(values.numpy(), want_v, rtol=1e-6)
    np.testing.assert_array_equal(indices.numpy(), want_i)
    assert indices.dtype == mc.int64 and not indices.requires_grad
    np.testing.assert_array_equal(t.argmax(dim, keepdim).numpy(), want_i)
    gy = np.random.default_rng(seed).standard_normal(values.shape)
    values.backward(mc.tensor(gy))
    expected = np.zeros(shape)
    idx = want_i if keepdim else np.expand_dims(want_i, dim)
    np.put_along_axis(expected, idx, gy if keepdim else np.expand_dims(gy, dim), axis=dim)
    np.testing.assert_allclose(t.grad.numpy(), expected, rtol=1e-12)
    if not ties:
        assert_gradcheck(lambda u: u.max(dim, keepdim)[0], x.astype(np.float64))


def amax_oracle_grad(x, dim, keepdim, gy):
    """amax's backward: gy shared equally among the tied maxima of each reduced group."""
    dims = tuple(range(x.ndim)) if dim is None else tuple(np.atleast_1d(dim) % max(x.ndim, 1))
    m = x.max(axis=dims, keepdims=True)
    hits = x == m
    g = gy if keepdim else np.expand_dims(gy, dims) if dims else gy
    return np.where(hits, g / hits.sum(axis=dims, keepdims=True), 0.0)


@given(sd=shape_dims(max_dims=3), keepdim=st.booleans(), seed=SEED)
def test_amax_ties_match_oracle_backward(sd, keepdim, seed):
    shape, dim = sd
    x = distinct_or_tied(shape, seed, True)
    t = leaf(x)
    y = t.amax(dim, keepdim=keepdim)
    np.testing.assert_array_equal(y.numpy(), ref.reduce_amax(x, dim, keepdim))
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(mc.tensor(gy))
    np.testing.assert_allclose(t.grad.numpy(), amax_oracle_grad(x, dim, keepdim, gy), rtol=1e-12)


def test_max_picks_the_first_of_ties_and_whole_tensor_max():
    x = leaf(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0]]))
    values, indices = x.max(1)
    np.testing.assert_array_equal(indices.numpy(), [1, 0])
    values.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])
    assert x.max().item() == 3.0 and x.argmax().item() == 1


def test_empty_dim_list_reduces_everything_and_zero_dim_tensors_accept_dim_0():
    x = arrays((2, 3), 7)
    t = leaf(x)
    for name, oracle in REDUCTIONS.items():
        np.testing.assert_allclose(_reduce(name, t, (), False).numpy(), oracle(x), rtol=1e-12)
    s = leaf(np.array(3.0))
    for name in ("sum", "mean", "amax"):
        for dim in (0, -1, (0,)):
            y = _reduce(name, s, dim, True)
            assert y.shape == () and y.item() == 3.0
    values, indices = s.max(0)
    assert values.item() == 3.0 and indices.item() == 0
    with pytest.raises(IndexError, match=r"sum: dimension 1 out of range.*\[-1, 0\]"):
        s.sum(1)


def test_reduction_errors():
    x = mc.ones(2, 3)
    with pytest.raises(IndexError, match=r"sum: dimension 2 out of range.*\[-2, 1\]"):
        x.sum(2)
    with pytest.raises(ValueError, match="mean: dimension .* repeated"):
        x.mean((1, -1))
    with pytest.raises(TypeError, match="mean: expected a floating-point tensor"):
        mc.tensor(np.ones(3, dtype=np.int64)).mean()


# ----------------------------------------------------------------------------- views
@st.composite
def shape_and_permutation(draw):
    # up to six dimensions (a strided view's most): 5-D and 6-D views use every outer index
    # of the strided gather, so they are drawn as often as the small ones
    ndim = draw(st.integers(1, 6))
    shape = tuple(draw(st.integers(1, 4 if ndim <= 3 else 2)) for _ in range(ndim))
    return shape, tuple(draw(st.permutations(range(len(shape)))))


@given(sp=shape_and_permutation(), seed=SEED)
def test_permute(sp, seed):
    shape, dims = sp
    x = arrays(shape, seed)
    y = leaf(x, False).permute(*dims)
    np.testing.assert_array_equal(y.numpy(), ref.permute(x, dims))
    assert_gradcheck(lambda t: t.permute(dims), x)


def test_transpose_and_T():
    x = arrays((2, 3, 4), 1)
    np.testing.assert_array_equal(leaf(x).transpose(0, -1).numpy(), ref.permute(x, (2, 1, 0)))
    np.testing.assert_array_equal(leaf(x).T.numpy(), ref.permute(x, (2, 1, 0)))
    assert_gradcheck(lambda t: t.transpose(1, 2) * 2, x)
    with pytest.raises(ValueError, match="not a permutation"):
        leaf(x).permute(0, 0, 1)


def test_reshape_family():
    x = arrays((2, 3, 4), 2)
    t = leaf(x)
    assert t.reshape(4, -1).shape == (4, 6) and t.view(24).shape == (24,)
    assert t.flatten().shape == (24,) and t.flatten(1).shape == (2, 12)
    assert t.unsqueeze(1).shape == (2, 1, 3, 4) and t.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert t.reshape(2, 1, 12).squeeze().shape == (2, 12)
    assert t.reshape(2, 1, 12).squeeze(1).shape == (2, 12)
    np.testing.assert_array_equal(t.reshape(6, 4).numpy(), x.reshape(6, 4))
    assert_gradcheck(lambda u: u.reshape(3, 8).flatten().unsqueeze(0) * 3, x)
    with pytest.raises(ValueError, match=r"reshape: shape \(5, -1\) is invalid for input of size"):
        t.reshape(5, -1)


@given(data=st.data(), shape=shapes(1, 3, 1, 5), seed=SEED)
def test_getitem_basic_indices(data, shape, seed):
    index = data.draw(basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = arrays(shape, seed)
    y = leaf(x, False)[index]
    want = ref.getitem(x, index)
    assert y.shape == want.shape
    np.testing.assert_array_equal(y.numpy(), want)
    assert_gradcheck(lambda t: t[index], x)


@pytest.mark.parametrize(
    "index",
    [
        (slice(None, None, -1),),
        (slice(3, 0, -2), Ellipsis, None),
        (Ellipsis, 1),
        (None, slice(1, None), None, slice(None, None, 2)),
        (-1, slice(-2, None)),
        (slice(5, 9),),  # empty
    ],
)
def test_getitem_cases(index):
    x = arrays((4, 3), 5)
    y = leaf(x)[index]
    np.testing.assert_array_equal(y.numpy(), ref.getitem(x, index))
    assert_gradcheck(lambda t: t[index], x)


def test_getitem_errors():
    x = mc.ones(2, 3)
    with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 1 with size 3"):
        x[0, 3]
    with pytest.raises(IndexError, match="too many indices"):
        x[0, 0, 0]
    with pytest.raises(IndexError, match="only integers, slices, None and ... are supported"):
        x[[0, 1]]


@st.composite
def cat_inputs(draw, stack=False):
    base = list(draw(shapes(1, 3, 1, 3)))
    dim = draw(st.integers(-len(base) - int(stack), len(base) - 1 + int(stack)))
    count = draw(st.integers(1, 3))
    result = []
    for _ in range(count):
        shape = list(base)
        if not stack:
            shape[dim] = draw(st.integers(0 if count > 1 else 1, 3))
        result.append(tuple(shape))
    return result, dim


@given(ci=cat_inputs(), seed=SEED)
def test_cat(ci, seed):
    shape_list, dim = ci
    xs = [arrays(s, seed + k) for k, s in enumerate(shape_list)]
    y = mc.cat([leaf(x, False) for x in xs], dim)
    np.testing.assert_array_equal(y.numpy(), ref.cat(xs, dim))
    assert_gradcheck(lambda *ts: mc.cat(list(ts), dim), *xs)


@given(ci=cat_inputs(stack=True), seed=SEED)
def test_stack(ci, seed):
    shape_list, dim = ci
    xs = [arrays(s, seed + k) for k, s in enumerate(shape_list)]
    y = mc.stack([leaf(x, False) for x in xs], dim)
    np.testing.assert_array_equal(y.numpy(), ref.stack(xs, dim))
    assert_gradcheck(lambda *ts: mc.stack(list(ts), dim), *xs)


def test_cat_errors():
    with pytest.raises(ValueError, match="cat: sizes must match except in dimension 0"):
        mc.cat([mc.ones(2, 3), mc.ones(2, 4)])
    with pytest.raises(TypeError, match="cat: expected all tensors of dtype"):
        mc.cat([mc.ones(2), mc.ones(2, dtype=mc.float64)])
    with pytest.raises(ValueError, match="stack: expected tensors of one shape"):
        mc.stack([mc.ones(2), mc.ones(3)])


@st.composite
def expand_shapes(draw):
    shape = draw(shapes(0, 3, 1, 3).map(lambda s: tuple(1 if d == 2 else d for d in s)))
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    target = lead + tuple(draw(st.integers(1, 3)) if s == 1 else s for s in shape)
    return shape, target


@given(st_=expand_shapes(), seed=SEED)
def test_expand(st_, seed):
    shape, target = st_
    x = arrays(shape, seed)
    y = leaf(x, False).expand(*target)
    np.testing.assert_array_equal(y.numpy(), ref.broadcast_to(x, target))
    np.testing.assert_array_equal(
        mc.ops.broadcast_to(leaf(x, False), target).numpy(), ref.broadcast_to(x, target)
    )
    assert_gradcheck(lambda t: t.expand(target), x)


def test_expand_minus_one_and_errors():
    t = mc.ones(3, 1)
    assert t.expand(2, -1, 4).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"expand: cannot expand shape \(3, 1\) to \(2, 4\)"):
        t.expand(2, 4)


def test_cast():
    x = arrays((2, 3), 6)
    t = leaf(x)
    y = t.float()
    assert y.dtype == mc.float32
    (y * 2).sum().backward()
    assert t.grad.dtype == mc.float64
    np.testing.assert_array_equal(t.grad.numpy(), 2.0)
    i = mc.tensor(x * 10).long()
    assert i.dtype == mc.int64 and not i.requires_grad
    np.testing.assert_array_equal(i.numpy(), (x * 10).astype(np.float32).astype(np.int64))
    # float32 rounds x +- eps: a wide step keeps the difference quotient meaningful (f is linear)
    assert_gradcheck(lambda u: u.float().double() * 1.5, x, eps=1e-2, atol=1e-4)


# ----------------------------------------------------------------------------- engine
def test_fan_out_accumulates():
    x = np.array([1.0, -2.0, 3.0])
    t = leaf(x)
    y = t * t + t  # t used three times
    y.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), 2 * x + 1)
    z = leaf(x)
    w = z.exp()
    (w * w + w.sum()).sum().backward()  # w fans out to two consumers
    np.testing.assert_allclose(z.grad.numpy(), 2 * np.exp(2 * x) + 3 * np.exp(x))


def test_diamond_graph():
    t = leaf(np.array([0.5, 1.5]))
    a = t.sigmoid()
    b, c = a * 2, a.exp()
    (b + c).sum().backward()
    s = 1 / (1 + np.exp(-t.numpy()))
    np.testing.assert_allclose(t.grad.numpy(), (2 + np.exp(s)) * s * (1 - s))


def test_retain_graph():
    t = leaf(np.array([1.0, 2.0]))
    y = (t * t).sum()
    y.backward(retain_graph=True)
    y.backward()  # accumulates into .grad
    np.testing.assert_allclose(t.grad.numpy(), 2 * 2 * t.numpy())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_grads_accumulate_across_backward_calls():
    t = leaf(np.array([1.0, 2.0]))
    (t * 3).sum().backward()
    (t * 4).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), 7.0)


def test_no_grad_and_enable_grad():
    t = leaf(np.array([1.0, 2.0]))
    with mc.no_grad():
        y = t * 2
        with mc.enable_grad():
            z = t * 2
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad and not z.is_leaf
    assert mc.is_grad_enabled()

    @mc.no_grad
    def f(u):
        return u * 2

    assert not f(t).requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach():
    t = leaf(np.array([1.0, 2.0]))
    d = (t * 2).detach()
    assert not d.requires_grad and d.is_leaf
    y = (t * d).sum()
    y.backward()
    np.testing.assert_allclose(t.grad.numpy(), d.numpy())  # d was a constant


def test_grad_only_on_leaves():
    t = leaf(np.array([1.0, 2.0]))
    h = t * 2
    (h * h).sum().backward()
    assert t.is_leaf and t.grad is not None
    assert not h.is_leaf and h.grad is None
    c = mc.tensor(np.array([1.0, 2.0]))  # a leaf that does not require grad
    (t * c).sum().backward()
    assert c.grad is None


def test_backward_errors():
    t = leaf(np.array([1.0, 2.0]))
    with pytest.raises(RuntimeError, match=r"implicitly created only for scalar outputs.*\(2,\)"):
        (t * 2).backward()
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\), expected.*\(2,\)"):
        (t * 2).backward(mc.ones(3, dtype=mc.float64))
    with pytest.raises(RuntimeError, match="only floating-point tensors can require gradients"):
        mc.tensor(np.array([1, 2]), requires_grad=True)
    y = t * 2
    y.backward(mc.tensor(np.array([1.0, 10.0])).double())
    np.testing.assert_allclose(t.grad.numpy(), [2.0, 20.0])


def test_deep_graph_has_no_recursion_limit():
    t = leaf(np.array([1.0]))
    y = t
    for _ in range(3000):
        y = y + 0.001
    y.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), 1.0)


# ----------------------------------------------------------------------------- CUDA
CUDA_CASES = {
    "unary": (
        lambda t: (t.exp() + t.abs() + t.relu() + t.sigmoid() + t.tanh() - t).clamp(-3, 3),
        [(2, 3)],
    ),
    "log_sqrt_pow": (
        lambda t: (t * t + 1).log() + (t * t + 1).sqrt() + (t * t + 1) ** 1.5,
        [(2, 3)],
    ),
    "binary": (lambda a, b: a + b * a - a / (b * b + 1) - b, [(2, 1, 3), (4, 1)]),
    "reduce": (
        lambda t: (
            t.sum(1, keepdim=True)
            + t.mean((0, 2)).reshape(1, 3, 1)
            + t.var(2, keepdim=True)
            + t.amax(0)
        ),
        [(2, 3, 4)],
    ),
    "max": (lambda t: t.max(1)[0], [(3, 4)]),
    "views": (lambda t: t.permute(2, 0, 1)[1:, ::-1, None, 0].expand(3, 2, 2) * 1.0, [(2, 3, 4)]),
    # six dimensions, the most a strided view has: every padded dimension is a real one
    "views_6d": (lambda t: t.permute(5, 3, 1, 4, 0, 2) * 1.0, [(2, 3, 1, 2, 2, 3)]),
    "cat": (lambda a, b: mc.cat([a, b], 1) + mc.stack([a, a], 1).reshape(2, 4), [(2, 2), (2, 2)]),
    "cast": (lambda t: t.float().double() * 2, [(3,)]),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_parity(case, dtype):
    fn, in_shapes = CUDA_CASES[case]
    xs = [distinct(s, k, dtype) for k, s in enumerate(in_shapes)]
    if case == "binary":
        xs[1] = xs[1] + 0.01  # distinct() holds a 0
    assert_cuda_parity(fn, *xs, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_move_between_devices_is_differentiable():
    t = leaf(np.array([1.0, 2.0, 3.0]))
    g = t.cuda()
    assert g.device == "cuda"
    y = (g * g).cpu()
    assert y.device == "cpu"
    y.sum().backward()
    assert t.grad.device == "cpu"
    np.testing.assert_allclose(t.grad.numpy(), 2 * t.numpy())


@pytest.mark.cuda
def test_mixed_devices_error_and_zero_dim_cuda_tensor():
    with pytest.raises(RuntimeError, match="expected all tensors on one device"):
        mc.ones(2) + mc.ones(2, device="cuda")
    s = mc.tensor(2.0, device="cuda")
    assert s.shape == () and (s * mc.ones(3, device="cuda")).shape == (3,)
