"""The fused ops of the ResNet blocks: batch_norm_relu (relu(BN(x))) and add_relu
(relu(a + b)). Each against a loop oracle and against the unfused composition of minicbam's
own ops (forward, running statistics, every gradient), in training and evaluation, with
exact zeros at the ReLU's kink (relu'(0) = 0 both ways) and NaN inputs; float64 gradchecks on
drawn shapes (batch 1, odd sides and channel counts); CUDA parity and CUDA vs the oracle;
the module entry (BatchNorm2d.forward_relu) against relu(bn(x)), counter and modes included."""

import numpy as np
import pytest
import reference_pool as ref
from helpers import assert_cuda_parity, assert_gradcheck, assert_matches_oracle, leaf
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn
from minicbam.models.resnet import bn_relu, residual_relu
from minicbam.ops.add_relu import AddReLU, add_relu
from minicbam.ops.batch_norm import batch_norm
from minicbam.ops.batch_norm_relu import BatchNormReLU, batch_norm_relu

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}
seeds = st.integers(0, 2**16)


@st.composite
def shapes(draw):
    """(N, C, H, W), batch 1 and odd sides and channel counts included, more than one value
    per channel."""
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 5]))
    h, w = draw(st.sampled_from([(1, 1), (1, 3), (3, 3), (2, 5)]))
    if n * h * w == 1:
        n = 2
    return (n, c, h, w)


def bn_arrays(shape, seed, dtype=np.float64):
    """x, weight, bias, running_mean, running_var."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.3
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    return [a.astype(dtype) for a in (x, w, b, rm, rv)]


def _run_bn(fused, x, w, b, rm, rv, training, gy, device="cpu", momentum=0.1):
    """(y, gx, gw, gb, running_mean, running_var) of the fused op or relu(batch_norm)."""
    xs, ws, bs = (leaf(a, device=device) for a in (x, w, b))
    trm, trv = mc.tensor(rm, device=device), mc.tensor(rv, device=device)
    if fused:
        y = batch_norm_relu(xs, trm, trv, ws, bs, training, momentum, 1e-5)
    else:
        y = F.relu(batch_norm(xs, trm, trv, ws, bs, training, momentum, 1e-5))
    y.backward(mc.tensor(gy, dtype=gy.dtype, device=device))
    return [t.numpy() for t in (y, xs.grad, ws.grad, bs.grad, trm, trv)]


def _bn_relu_oracle(rm, rv, training, momentum=0.1):
    """(y, [gx, gw, gb]) of relu(BN) from the loop oracle; gradients by the closed form on
    the oracle's x_hat (the relu mask applied to gy first, relu'(0) = 0)."""

    def oracle(x, w, b, gy):
        y_bn, _, _ = ref.batch_norm(x, rm, rv, w, b, training, momentum, 1e-5)
        g = np.where(y_bn > 0, gy, 0.0)
        axes = (0, 2, 3)
        if training:
            mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
        else:
            mean, var = rm.reshape(1, -1, 1, 1), rv.reshape(1, -1, 1, 1)
        invstd = 1.0 / np.sqrt(var + 1e-5)
        x_hat = (x - mean) * invstd
        gw, gb = (g * x_hat).sum(axes), g.sum(axes)
        k = w.reshape(1, -1, 1, 1) * invstd
        if training:
            gx = k * (
                g - g.mean(axes, keepdims=True) - x_hat * (g * x_hat).mean(axes, keepdims=True)
            )
        else:
            gx = k * g
        return np.maximum(y_bn, 0.0), [gx, gw, gb]

    return oracle


# ----------------------------------------------------------------------------- batch_norm_relu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@given(shape=shapes(), momentum=st.sampled_from([0.1, 1.0]), seed=seeds)
def test_bn_relu_matches_oracle(dtype, training, shape, momentum, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed, dtype)
    trm, trv = mc.tensor(rm), mc.tensor(rv)
    y = batch_norm_relu(mc.tensor(x), trm, trv, mc.tensor(w), mc.tensor(b), training, momentum)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training, momentum, 1e-5)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y.numpy(), np.maximum(y_ref, 0.0), **TOL[dtype])
    np.testing.assert_allclose(trm.numpy(), rm_ref, **TOL[dtype])
    np.testing.assert_allclose(trv.numpy(), rv_ref, **TOL[dtype])


@pytest.mark.parametrize("training", [True, False])
@given(shape=shapes(), seed=seeds)
def test_bn_relu_gradients_match_oracle(training, shape, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed)
    trm, trv = mc.tensor(rm), mc.tensor(rv)

    def fn(t, tw, tb):
        return batch_norm_relu(
            t, None if training else trm, None if training else trv, tw, tb, training
        )

    oracle = _bn_relu_oracle(rm, rv, training)
    assert_matches_oracle(fn, [x, w, b], oracle, "cpu", rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@given(shape=shapes(), seed=seeds)
def test_bn_relu_equals_unfused_composition(dtype, training, shape, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed, dtype)
    gy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    fused = _run_bn(True, x, w, b, rm, rv, training, gy)
    unfused = _run_bn(False, x, w, b, rm, rv, training, gy)
    for got, want in zip(fused, unfused):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("training", [True, False])
def test_bn_relu_exact_zeros_at_the_kink(training):
    # x in {-1, 0, 1} per channel: the batch mean is exactly 0, so with bias 0 the
    # pre-activation is exactly 0 wherever x is 0 (training); in eval the running mean is 0
    x = np.array([-1.0, 0.0, 1.0, 0.0, 1.0, -1.0]).reshape(1, 2, 3, 1) * np.ones((2, 1, 1, 1))
    w, b = np.array([1.5, -0.5]), np.zeros(2)
    rm, rv = np.zeros(2), np.ones(2)
    gy = np.arange(1.0, 1.0 + x.size).reshape(x.shape)
    for dtype in DTYPES:
        args = [a.astype(dtype) for a in (x, w, b, rm, rv)]
        fused = _run_bn(True, *args, training, gy.astype(dtype))
        unfused = _run_bn(False, *args, training, gy.astype(dtype))
        assert (fused[0] == 0).sum() >= 6  # the kink is reached
        for got, want in zip(fused, unfused):
            np.testing.assert_array_equal(got, want)


def test_bn_relu_nan_like_unfused():
    x, w, b, rm, rv = bn_arrays((2, 3, 3, 1), 4)
    x[1, 0, 2, 0] = np.nan
    gy = np.ones_like(x)
    for training in (True, False):
        fused = _run_bn(True, x, w, b, rm, rv, training, gy)
        unfused = _run_bn(False, x, w, b, rm, rv, training, gy)
        assert np.isnan(fused[0]).any()
        for got, want in zip(fused, unfused):
            np.testing.assert_array_equal(got, want)  # NaN where the other has NaN


@given(shape=shapes(), training=st.booleans(), affine=st.booleans(), seed=seeds)
def test_bn_relu_gradcheck(shape, training, affine, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed)
    stats = (None, None) if training else (mc.tensor(rm), mc.tensor(rv))
    if affine:
        assert_gradcheck(lambda t, tw, tb: batch_norm_relu(t, *stats, tw, tb, training), x, w, b)
    else:
        assert_gradcheck(lambda t: batch_norm_relu(t, *stats, None, None, training), x)


def test_bn_relu_errors_are_batch_norms():
    x = mc.tensor(np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="running_mean and running_var must be defined"):
        batch_norm_relu(x, None, None, training=False)
    with pytest.raises(ValueError, match="weight should contain 3 elements"):
        batch_norm_relu(x, None, None, mc.tensor(np.ones(2)), training=True)


# ----------------------------------------------------------------------------- module entry
@pytest.mark.parametrize("momentum", [0.1, None])
def test_forward_relu_matches_relu_of_module(momentum):
    rng = np.random.default_rng(0)
    mods = [nn.BatchNorm2d(3, momentum=momentum, dtype=mc.float64) for _ in range(2)]
    for m in mods:
        m.weight.data[:] = rng.standard_normal(3)
    mods[1].load_state_dict(mods[0].state_dict())
    for mode in ("train", "train", "eval"):
        x = rng.standard_normal((2, 3, 3, 5))
        outs = []
        for k, m in enumerate(mods):
            getattr(m, mode)()
            t = leaf(x)
            y = m.forward_relu(t) if k == 0 else F.relu(m(t))
            y.sum().backward()
            outs.append([y.numpy(), t.grad.numpy(), m.weight.grad.numpy()])
            m.zero_grad()
        for got, want in zip(*outs):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    theirs = mods[1].state_dict()
    for key, value in mods[0].state_dict().items():
        np.testing.assert_array_equal(value, theirs[key])
    assert int(mods[0].num_batches_tracked.item()) == 2


def test_block_helpers_fall_back_for_replaced_modules():
    x = leaf(np.random.default_rng(1).standard_normal((2, 3, 2, 2)))
    bn = nn.BatchNorm2d(3, dtype=mc.float64)
    assert isinstance(bn_relu(bn, nn.ReLU(), x).creator, BatchNormReLU)
    assert isinstance(residual_relu(nn.ReLU(), x, x).creator, AddReLU)
    y = bn_relu(nn.Identity(), nn.ReLU(), x)  # a folded BN: plain relu(x)
    np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy(), 0))
    y = bn_relu(bn, nn.Identity(), x)  # another activation: BN alone
    np.testing.assert_allclose(y.numpy().mean((0, 2, 3)), 0, atol=1e-12)
    y = residual_relu(nn.Identity(), x, x)
    np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())


# ----------------------------------------------------------------------------- add_relu
def _run_add(fused, a, b, gy, device="cpu"):
    ta, tb = leaf(a, device=device), leaf(b, device=device)
    y = add_relu(ta, tb) if fused else F.relu(ta + tb)
    y.backward(mc.tensor(gy, dtype=gy.dtype, device=device))
    return [t.numpy() for t in (y, ta.grad, tb.grad)]


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes(), seed=seeds)
def test_add_relu_matches_oracle_and_unfused(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    a, b, gy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    a.flat[0] = -b.flat[0]  # an exact zero sum: relu'(0) = 0
    fused = _run_add(True, a, b, gy)
    s = a.astype(np.float64) + b
    mask = s > 0
    np.testing.assert_allclose(fused[0], np.maximum(s, 0), **TOL[dtype])
    for g in fused[1:]:
        np.testing.assert_array_equal(g, np.where(mask, gy, 0))
    for got, want in zip(fused, _run_add(False, a, b, gy)):
        np.testing.assert_array_equal(got, want)


def test_add_relu_nan_and_same_input_twice():
    a = np.array([np.nan, -1.0, 2.0, 0.0])
    gy = np.array([1.0, 2.0, 3.0, 4.0])
    for got, want in zip(_run_add(True, a, -a, gy), _run_add(False, a, -a, gy)):
        np.testing.assert_array_equal(got, want)
    t = leaf(np.array([1.0, -1.0, 0.5]))
    add_relu(t, t).sum().backward()  # one gradient array for both inputs, summed into one leaf
    np.testing.assert_array_equal(t.grad.numpy(), [2.0, 0.0, 2.0])


@given(shape=shapes(), seed=seeds)
def test_add_relu_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    assert_gradcheck(add_relu, a, b)


def test_add_relu_errors():
    with pytest.raises(ValueError, match=r"add_relu: expected two tensors of one shape"):
        add_relu(mc.tensor(np.zeros((2, 3))), mc.tensor(np.zeros((3,))))


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_relu_cuda_parity_and_unfused(training, dtype):
    x, w, b, rm, rv = bn_arrays((2, 3, 3, 1), 5, dtype)
    x[0, 1, 1, 0] = 0.0
    rm[1] = 0.0  # eval: an exact zero at the kink
    gy = np.random.default_rng(6).standard_normal(x.shape).astype(dtype)
    fused_gpu = _run_bn(True, x, w, b, rm, rv, training, gy, "cuda")
    for want in (
        _run_bn(False, x, w, b, rm, rv, training, gy, "cuda"),
        _run_bn(True, x, w, b, rm, rv, training, gy, "cpu"),
    ):
        for got, exp in zip(fused_gpu, want):
            np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@settings(max_examples=3)
@given(training=st.booleans(), seed=seeds)
def test_bn_relu_cuda_matches_oracle(training, seed):
    x, w, b, rm, rv = bn_arrays((1, 3, 3, 1), seed)
    trm, trv = mc.tensor(rm, device="cuda"), mc.tensor(rv, device="cuda")

    def fn(t, tw, tb):
        return batch_norm_relu(
            t, None if training else trm, None if training else trv, tw, tb, training
        )

    assert_matches_oracle(
        fn, [x, w, b], _bn_relu_oracle(rm, rv, training), "cuda", rtol=1e-9, atol=1e-11
    )


@pytest.mark.cuda
def test_add_relu_cuda_parity_and_oracle():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))
    a[0, 0, 0] = -b[0, 0, 0]
    assert_cuda_parity(add_relu, a, b, rtol=1e-12, atol=1e-12)

    def oracle(a_, b_, gy):
        s = a_ + b_
        return np.maximum(s, 0), [np.where(s > 0, gy, 0)] * 2

    assert_matches_oracle(add_relu, [a, b], oracle, "cuda")
