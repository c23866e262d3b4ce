"""max_pool2d, avg_pool2d, adaptive_{avg,max}_pool2d: forward vs loop oracles and PyTorch,
float64 gradient checks on hypothesis-drawn geometries, CUDA parity, errors."""

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
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.adaptive_pool import PLANE_BLOCK, adaptive_avg_pool2d, adaptive_max_pool2d
from minicbam.ops.avg_pool2d import avg_pool2d
from minicbam.ops.max_pool2d import max_pool2d

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-14}}


def distinct(shape, seed, dtype=np.float64):
    """Values in [-2, 2) with no ties (a scaled permutation): max windows have one winner."""
    return distinct_or_tied(shape, seed, False, dtype)


def _sizes_with_overhang(k, s, p, lo, hi):
    """Input sizes in [lo, hi] whose ceil-mode output has a last window past the padded edge
    (it starts inside the input or left padding but ends beyond the right padding)."""
    sizes = []
    for size in range(lo, hi + 1):
        span = size + 2 * p - k
        if span >= 0 and span % s and (span // s + 1) * s < size + p:
            sizes.append(size)
    return sizes


@st.composite
def pool_cases(draw, dilation=True, max_n=2, max_c=3, max_side=7, kinds=("general", "fast2x2")):
    """(x shape, kernel, stride, padding, dilation, ceil_mode) with at least one output.

    The structure is drawn first, so that rare paths are not left to chance: ``fast2x2`` is
    the CPU max-pool's unrolled path (2x2 window, no padding, no dilation, no overhang);
    ``edge`` (avg-pool) is ceil mode with padding and a last window past the padded edge;
    ``padded`` has padding on both sides; ``general`` is anything. Planes go up to 3 x 3 rows of windows with remainders."""
    kind = draw(st.sampled_from(kinds))
    if kind == "padded":  # windows of 2 or 3 with padding 1 on both sides
        k = (draw(st.integers(2, 3)), draw(st.integers(2, 3)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        p, d, ceil_mode = (1, 1), (1, 1), draw(st.booleans())
    elif kind == "fast2x2":
        k, p, d, ceil_mode = (2, 2), (0, 0), (1, 1), False
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
        d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
        ceil_mode = draw(st.booleans())
    if kind == "edge":  # rows: kernel 3, stride 2 or 3, padding 1 (columns as drawn)
        k, s, p, d = (3, k[1]), (draw(st.integers(2, 3)), s[1]), (1, p[1]), (1, 1)
        ceil_mode = True
    h_min = max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0])
    w_min = max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1])
    h_max, w_max = max(h_min, max_side), max(w_min, max_side)
    overhang = _sizes_with_overhang(k[0], s[0], p[0], h_min, h_max) if kind == "edge" else []
    shape = (
        draw(st.integers(1, max_n)),
        draw(st.integers(1, max_c)),
        draw(st.sampled_from(overhang)) if overhang else draw(st.integers(h_min, h_max)),
        draw(st.integers(w_min, w_max)),
    )
    return shape, k, s, p, d, ceil_mode


seeds = st.integers(0, 2**16)


# ----------------------------------------------------------------------------- max_pool2d
def max_pool_oracle(k, s, p, d, ceil_mode):
    def oracle(x, gy):
        y, idx = ref.max_pool2d(x, k, s, p, d, ceil_mode)
        return y, [ref.max_pool2d_grad(x.shape, idx, gy)]

    return oracle


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(), ties=st.booleans(), seed=seeds)
def test_max_pool_matches_oracle(dtype, case, ties, seed):
    # with ties the winner (index and gradient) must be the first maximum in scan order
    shape, k, s, p, d, ceil_mode = case
    x = distinct_or_tied(shape, seed, ties, dtype)
    y, idx = max_pool2d(mc.tensor(x), k, s, p, d, ceil_mode, return_indices=True)
    y_ref, idx_ref = ref.max_pool2d(x, k, s, p, d, ceil_mode)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_array_equal(idx.numpy(), idx_ref)
    if np.all(idx_ref >= 0):  # an all-padding window's -inf has no gradient to compare
        fn = lambda t: max_pool2d(t, k, s, p, d, ceil_mode)
        assert_matches_oracle(fn, [x], max_pool_oracle(k, s, p, d, ceil_mode), "cpu", **TOL[dtype])


@settings(max_examples=5)
@given(case=pool_cases(), seed=seeds)
def test_max_pool_matches_torch(case, seed):
    torch = pytest.importorskip("torch")
    shape, k, s, p, d, ceil_mode = case
    x, gy_seed = distinct(shape, seed), seed + 1
    t = leaf(x)
    y, idx = max_pool2d(t, k, s, p, d, ceil_mode, return_indices=True)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    # A window entirely in the padding gets a garbage index from PyTorch, and its backward
    # then writes outside the input (seen: "free(): invalid size", the process aborts).
    # minicbam's answer there (-inf, index -1, no gradient) is checked against the oracle.
    assume(bool(np.all(idx.numpy() >= 0)))
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode, return_indices=True)
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


@given(case=pool_cases(max_side=5), seed=seeds)
def test_max_pool_gradcheck(case, seed):
    shape, k, s, p, d, ceil_mode = case
    x = distinct(shape, seed)
    assume(np.all(ref.max_pool2d(x, k, s, p, d, ceil_mode)[1] >= 0))  # no all-padding window
    assert_gradcheck(lambda t: max_pool2d(t, k, s, p, d, ceil_mode), x)


SPECIAL = np.array([np.nan, -0.0, 0.0, 1.0, -1.0, np.inf, -np.inf])


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(kinds=("general", "fast2x2", "fast2x2")), seed=seeds)
def test_max_pool_special_values_match_oracle(dtype, case, seed):
    """NaN, signed zeros and infinities, mostly tied: the index is the first maximum or the
    last NaN, and the value is that element itself (bit for bit: -0.0 stays -0.0)."""
    shape, k, s, p, d, ceil_mode = case
    x = np.random.default_rng(seed).choice(SPECIAL, size=shape).astype(dtype)
    y, idx = max_pool2d(mc.tensor(x), k, s, p, d, ceil_mode, return_indices=True)
    y_ref, idx_ref = ref.max_pool2d(x, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(idx.numpy(), idx_ref)
    np.testing.assert_array_equal(y.numpy(), y_ref)  # NaN == NaN here
    np.testing.assert_array_equal(np.signbit(y.numpy()), np.signbit(y_ref))


def test_max_pool_ties_route_to_first_maximum():
    x = np.ones((1, 1, 4, 4))
    t = leaf(x)
    y, idx = max_pool2d(t, 3, 1, 1, return_indices=True)
    # the first in-bounds element of each window (scan order kh, then kw)
    first = [[0, 0, 1, 2], [0, 0, 1, 2], [4, 4, 5, 6], [8, 8, 9, 10]]
    np.testing.assert_array_equal(idx.numpy()[0, 0], first)
    y.sum().backward()
    expected = np.bincount(np.ravel(first), minlength=16).reshape(4, 4)
    np.testing.assert_array_equal(t.grad.numpy()[0, 0], expected)


def test_max_pool_defaults_and_3d_input():
    x = distinct((2, 6, 6), 0)
    y = max_pool2d(mc.tensor(x), 2)  # stride defaults to the kernel size
    y_ref, _ = ref.max_pool2d(x[None], (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y.numpy(), y_ref[0])


# ----------------------------------------------------------------------------- avg_pool2d
# (count_include_pad, divisor_override): no override half of the time, so that the divisor
# rules (with and without the padding) are what the draw mostly checks
avg_options = st.tuples(st.booleans(), st.sampled_from([None, None, None, 1, 3]))


avg_cases = pool_cases(dilation=False, kinds=("general", "edge", "padded"))


def avg_pool_oracle(k, s, p, ceil_mode, include_pad, override):
    def oracle(x, gy):
        options = (ceil_mode, include_pad, override)
        y = ref.avg_pool2d(x, k, s, p, *options)
        return y, [ref.avg_pool2d_grad(x.shape, gy, k, s, p, *options)]

    return oracle


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=avg_cases, options=avg_options, seed=seeds)
def test_avg_pool_matches_oracle(dtype, case, options, seed):
    shape, k, s, p, _, ceil_mode = case
    include_pad, override = options
    x = distinct(shape, seed, dtype)
    y = avg_pool2d(mc.tensor(x), k, s, p, ceil_mode, include_pad, override)
    y_ref = ref.avg_pool2d(x, k, s, p, ceil_mode, include_pad, override)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL[dtype])
    fn = lambda t: avg_pool2d(t, k, s, p, ceil_mode, include_pad, override)
    oracle = avg_pool_oracle(k, s, p, ceil_mode, include_pad, override)
    assert_matches_oracle(fn, [x.astype(np.float64)], oracle, "cpu")


@settings(max_examples=5)
@given(case=avg_cases, options=avg_options, seed=seeds)
def test_avg_pool_matches_torch(case, options, seed):
    torch = pytest.importorskip("torch")
    shape, k, s, p, _, ceil_mode = case
    include_pad, override = options
    x = distinct(shape, seed)
    t = leaf(x)
    y = avg_pool2d(t, k, s, p, ceil_mode, include_pad, override)
    gy = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p, ceil_mode, include_pad, override)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)


@given(
    case=pool_cases(dilation=False, max_side=5, kinds=("general", "edge", "padded")),
    options=avg_options,
    seed=seeds,
)
def test_avg_pool_gradcheck(case, options, seed):
    shape, k, s, p, _, ceil_mode = case
    include_pad, override = options
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradcheck(lambda t: avg_pool2d(t, k, s, p, ceil_mode, include_pad, override), x)


# ----------------------------------------------------------------------------- adaptive
@st.composite
def adaptive_cases(draw):
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 7)),
        draw(st.integers(1, 7)),
    )
    out = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return shape, out


def adaptive_max_oracle(out):
    def oracle(x, gy):
        y, idx = ref.adaptive_max_pool2d(x, out)
        return y, [ref.max_pool2d_grad(x.shape, idx, gy)]

    return oracle


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=adaptive_cases(), ties=st.booleans(), seed=seeds)
def test_adaptive_matches_oracle(dtype, case, ties, seed):
    shape, out = case
    x = distinct_or_tied(shape, seed, ties, dtype)
    y_avg = adaptive_avg_pool2d(mc.tensor(x), out)
    y_max, idx = adaptive_max_pool2d(mc.tensor(x), out, return_indices=True)
    np.testing.assert_allclose(y_avg.numpy(), ref.adaptive_avg_pool2d(x, out), **TOL[dtype])
    y_ref, idx_ref = ref.adaptive_max_pool2d(x, out)
    np.testing.assert_array_equal(y_max.numpy(), y_ref)
    np.testing.assert_array_equal(idx.numpy(), idx_ref)
    fn = lambda t: adaptive_max_pool2d(t, out)
    assert_matches_oracle(fn, [x.astype(np.float64)], adaptive_max_oracle(out), "cpu")


@settings(max_examples=5)
@given(case=adaptive_cases(), seed=seeds)
def test_adaptive_matches_torch(case, seed):
    torch = pytest.importorskip("torch")
    shape, out = case
    x = distinct(shape, seed)
    for ours, theirs in (
        (adaptive_avg_pool2d, torch.nn.functional.adaptive_avg_pool2d),
        (adaptive_max_pool2d, torch.nn.functional.adaptive_max_pool2d),
    ):
        t, tx = leaf(x), torch.tensor(x, requires_grad=True)
        y, ty = ours(t, out), theirs(tx, out)
        gy = np.random.default_rng(seed).standard_normal(y.shape)
        y.backward(mc.tensor(gy, dtype=np.float64))
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)


@given(case=adaptive_cases(), seed=seeds)
def test_adaptive_gradcheck(case, seed):
    shape, out = case
    x = distinct(shape, seed)
    assert_gradcheck(lambda t: adaptive_avg_pool2d(t, out), x)
    assert_gradcheck(lambda t: adaptive_max_pool2d(t, out), x)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=12)
@given(
    planes=st.sampled_from([PLANE_BLOCK - 1, PLANE_BLOCK, PLANE_BLOCK + 1, 2 * PLANE_BLOCK + 3]),
    batch_outer=st.booleans(),
    side=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    out=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    seed=seeds,
)
def test_adaptive_avg_across_plane_blocks(dtype, planes, batch_outer, side, out, seed):
    """The CPU average pool and its gradient run over blocks of PLANE_BLOCK planes: plane
    counts just under, at, over and past two blocks, against the loop oracles."""
    shape = ((planes, 1) if batch_outer else (1, planes)) + side
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    t = leaf(x)
    y = adaptive_avg_pool2d(t, out)
    np.testing.assert_allclose(y.numpy(), ref.adaptive_avg_pool2d(x, out), **TOL[dtype])
    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(mc.tensor(gy))
    gx = ref.adaptive_avg_pool2d_grad(shape, out, gy)
    np.testing.assert_allclose(t.grad.numpy(), gx, **TOL[dtype])


def test_adaptive_output_one_and_none():
    x = distinct((2, 3, 5, 4), 1)
    np.testing.assert_allclose(
        adaptive_avg_pool2d(mc.tensor(x), 1).numpy(), x.mean(axis=(2, 3), keepdims=True), rtol=1e-12
    )
    y, idx = adaptive_max_pool2d(mc.tensor(x), (1, 1), return_indices=True)
    assert y.shape == idx.shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(idx.numpy()[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=2))
    assert adaptive_avg_pool2d(mc.tensor(x), (None, 2)).shape == (2, 3, 5, 2)
    assert adaptive_avg_pool2d(mc.tensor(x), (2, None)).shape == (2, 3, 2, 4)  # W kept, not H
    assert adaptive_max_pool2d(mc.tensor(x[0]), 2).shape == (3, 2, 2)


# ----------------------------------------------------------------------------- CUDA parity
CUDA_CASES = [((2, 3, 6, 5), 3, 2, 1, 1, True), ((2, 2, 5, 6), (2, 3), 1, (1, 0), (2, 1), False)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CUDA_CASES)
def test_max_and_avg_pool_cuda_parity(dtype, case):
    shape, k, s, p, d, ceil_mode = case
    x = distinct(shape, 3, dtype)
    assert_cuda_parity(lambda t: max_pool2d(t, k, s, p, d, ceil_mode), x)
    assert_cuda_parity(lambda t: avg_pool2d(t, k, s, p, ceil_mode, False), x)
    y, idx = max_pool2d(mc.tensor(x, device="cuda"), k, s, p, d, ceil_mode, return_indices=True)
    _, idx_cpu = max_pool2d(mc.tensor(x), k, s, p, d, ceil_mode, return_indices=True)
    assert y.device == "cuda"
    np.testing.assert_array_equal(idx.numpy(), idx_cpu.numpy())


@pytest.mark.cuda
@settings(max_examples=6)
@given(
    case=pool_cases(max_n=1, max_c=2, max_side=5, kinds=("general", "fast2x2", "edge")),
    ties=st.booleans(),
    options=avg_options,
    seed=seeds,
)
def test_pools_cuda_match_oracle(case, ties, options, seed):
    # the CUDA kernels against the oracles (parity alone misses a bug in a shared body)
    shape, k, s, p, d, ceil_mode = case
    x = distinct_or_tied(shape, seed, ties)
    if np.all(ref.max_pool2d(x, k, s, p, d, ceil_mode)[1] >= 0):
        fn = lambda t: max_pool2d(t, k, s, p, d, ceil_mode)
        assert_matches_oracle(fn, [x], max_pool_oracle(k, s, p, d, ceil_mode), "cuda")
    if d == (1, 1):
        fn = lambda t: avg_pool2d(t, k, s, p, ceil_mode, *options)
        assert_matches_oracle(fn, [x], avg_pool_oracle(k, s, p, ceil_mode, *options), "cuda")
    out = (shape[2] + 1) // 2, max(1, shape[3] - 1)
    assert_matches_oracle(
        lambda t: adaptive_max_pool2d(t, out), [x], adaptive_max_oracle(out), "cuda"
    )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out", [1, (2, 3)])
def test_adaptive_cuda_parity(dtype, out):
    x = distinct((2, 3, 5, 6), 4, dtype)
    assert_cuda_parity(lambda t: adaptive_avg_pool2d(t, out), x)
    assert_cuda_parity(lambda t: adaptive_max_pool2d(t, out), x)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: max_pool2d(x.reshape(4, 16), 2), "max_pool2d: expected a 4-D input"),
        (lambda x: max_pool2d(x, 2, stride=0), "max_pool2d: stride must be positive"),
        (lambda x: max_pool2d(x, 2, padding=2), "max_pool2d: pad should be at most half"),
        (lambda x: max_pool2d(x, 5), "larger than the padded input"),
        (lambda x: max_pool2d(x, 3, dilation=0), "max_pool2d: dilation must be positive"),
        (lambda x: avg_pool2d(x, 3, padding=(1, 2)), "avg_pool2d: pad should be at most half"),
        (lambda x: avg_pool2d(x, 2, divisor_override=0), "divisor_override must be positive"),
        (lambda x: adaptive_avg_pool2d(x, 0), "adaptive_avg_pool2d: output_size must be"),
        (lambda x: adaptive_max_pool2d(x, (1, 2, 3)), "adaptive_max_pool2d: output_size must"),
    ],
)
def test_pool_errors(call, message):
    x = mc.tensor(np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match=message):
        call(x)


def test_pool_error_names_shapes():
    with pytest.raises(ValueError, match=r"input size \(1, 2, 2\).*output size \(1, 0, 0\)"):
        max_pool2d(mc.tensor(np.zeros((1, 1, 2, 2))), 3)
