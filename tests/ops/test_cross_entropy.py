"""cross_entropy (fused log-softmax + NLL + smoothing) and nll_loss: forward vs the oracle
and PyTorch, gradients, CUDA parity, error messages."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    arrays,
    assert_cuda_parity,
    assert_gradcheck,
    assert_matches_oracle,
    leaf,
    numerical_gradient,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.cross_entropy import cross_entropy, nll_loss

IGNORE = -100


@st.composite
def problems(draw, max_spatial=2):
    """Logits (N, C, d...), int64 targets with some rows ignored, kwargs for the loss.

    The ignore index is drawn too: the default -100, another negative one, or a real class
    (whose rows are then skipped, as in PyTorch)."""
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 3), max_size=max_spatial)))
    seed = draw(st.integers(0, 2**32 - 1))
    ignore = draw(st.sampled_from([IGNORE, -1, C - 1]))
    rng = np.random.default_rng(seed)
    target = rng.integers(0, C, (N,) + spatial)
    if draw(st.booleans()):  # ignore some rows (maybe all of them)
        target[rng.random(target.shape) < 0.3] = ignore
    weight = rng.uniform(0.2, 2.0, C) if draw(st.booleans()) else None
    kwargs = {
        "weight": weight,
        "ignore_index": ignore,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "label_smoothing": draw(st.floats(0.0, 0.5)),
    }
    return arrays((N, C) + spatial, seed, -3, 3), target, kwargs


def _call(fn, x, target, kwargs, dtype=np.float64):
    kw = dict(kwargs)
    if kw.get("weight") is not None:
        kw["weight"] = mc.tensor(kw["weight"], dtype=dtype, device=x.device)
    return fn(x, mc.tensor(target, device=x.device), **kw)


def _nll_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k != "label_smoothing"}


def _tolerances(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(problem=problems())
def test_cross_entropy_matches_oracle(dtype, problem):
    x, target, kwargs = problem
    y = _call(cross_entropy, leaf(x.astype(dtype), False), target, kwargs, dtype)
    assert y.dtype == dtype
    expected = ref.cross_entropy(x.astype(dtype), target, **kwargs)
    assert y.shape == np.shape(expected)
    np.testing.assert_allclose(y.numpy(), expected, **_tolerances(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(problem=problems())
def test_nll_loss_matches_oracle(dtype, problem):
    x, target, kwargs = problem
    logp = ref.log_softmax(x, 1).astype(dtype)
    y = _call(nll_loss, leaf(logp, False), target, _nll_kwargs(kwargs), dtype)
    np.testing.assert_allclose(
        y.numpy(), ref.nll_loss(logp, target, **_nll_kwargs(kwargs)), **_tolerances(dtype)
    )


@given(problem=problems(max_spatial=1))
def test_cross_entropy_gradcheck(problem):
    x, target, kwargs = problem
    if kwargs["reduction"] == "mean" and np.all(target == kwargs["ignore_index"]):
        # an all-ignored mean is NaN, whose gradient is meaningless
        assume(x.shape[1] > 1)
        target.flat[0] = (kwargs["ignore_index"] + 1) % x.shape[1]
    assert_gradcheck(lambda t: _call(cross_entropy, t, target, kwargs), x)


@given(problem=problems(max_spatial=1))
def test_nll_loss_gradcheck(problem):
    x, target, kwargs = problem
    if kwargs["reduction"] == "mean" and np.all(target == kwargs["ignore_index"]):
        assume(x.shape[1] > 1)
        target.flat[0] = (kwargs["ignore_index"] + 1) % x.shape[1]
    assert_gradcheck(lambda t: _call(nll_loss, t, target, _nll_kwargs(kwargs)), x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 2, 2)])
def test_matches_torch(reduction, smoothing, weighted, shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    target = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    target.flat[1] = IGNORE
    weight = rng.uniform(0.5, 2.0, shape[1]) if weighted else None
    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}
    tx = torch.tensor(x, requires_grad=True)
    tw = None if weight is None else torch.tensor(weight)
    ty = F.cross_entropy(
        tx, torch.tensor(target), weight=tw, reduction=reduction, label_smoothing=smoothing
    )
    gy = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(gy))
    mx = leaf(x)
    y = _call(cross_entropy, mx, target, kwargs)
    y.backward(mc.tensor(gy, dtype=np.float64))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mx.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    # nll_loss on the same log-probabilities
    tl = torch.tensor(ref.log_softmax(x, 1), requires_grad=True)
    tn = F.nll_loss(tl, torch.tensor(target), weight=tw, reduction=reduction)
    tn.backward(torch.tensor(gy))
    ml = leaf(ref.log_softmax(x, 1))
    n = _call(nll_loss, ml, target, _nll_kwargs(kwargs))
    n.backward(mc.tensor(gy, dtype=np.float64))
    np.testing.assert_allclose(n.numpy(), tn.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ml.grad.numpy(), tl.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_unsmoothed_gradient_is_softmax_minus_one_hot():
    x = arrays((3, 4), 11)
    target = np.array([0, 3, 1])
    m = leaf(x)
    cross_entropy(m, mc.tensor(target), reduction="sum").backward()
    np.testing.assert_allclose(m.grad.numpy(), ref.softmax(x, 1) - np.eye(4)[target], atol=1e-12)


def test_unbatched_input():
    x = arrays((5,), 12)
    for reduction in ("mean", "sum", "none"):
        y = cross_entropy(leaf(x, False), mc.tensor(np.int64(2)), reduction=reduction)
        assert y.shape == ()
        np.testing.assert_allclose(y.item(), -ref.log_softmax(x, 0)[2], rtol=1e-12)


def test_all_ignored():
    x = leaf(arrays((3, 4), 13))
    target = mc.tensor(np.full(3, IGNORE))
    assert np.isnan(cross_entropy(x, target).item())
    s = cross_entropy(x, target, reduction="sum")
    assert s.item() == 0.0
    s.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


def test_custom_ignore_index_and_int32_targets():
    x = arrays((4, 3), 14)
    target = np.array([0, 2, 1, 2], dtype=np.int32)
    y = cross_entropy(leaf(x, False), mc.tensor(target), ignore_index=2)
    np.testing.assert_allclose(y.item(), ref.cross_entropy(x, target, ignore_index=2), rtol=1e-12)


def test_errors():
    x = mc.tensor(np.zeros((3, 4)))
    with pytest.raises(IndexError, match=r"target 7 is out of bounds for 4 classes"):
        cross_entropy(x, mc.tensor(np.array([0, 7, 1])))
    with pytest.raises(IndexError, match=r"nll_loss: target -1 is out of bounds for 4 classes"):
        nll_loss(x, mc.tensor(np.array([0, -1, 1])))
    with pytest.raises(TypeError, match="integer class-index targets.*float32"):
        cross_entropy(x, mc.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\).*got \(2,\)"):
        cross_entropy(x, mc.tensor(np.array([0, 1])))
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(x, mc.tensor(np.array([0, 1, 2])), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        cross_entropy(x, mc.tensor(np.array([0, 1, 2])), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"weight of shape \(4,\)"):
        cross_entropy(x, mc.tensor(np.array([0, 1, 2])), weight=mc.ones(3))


def test_no_gradient_for_weight_or_target():
    x = leaf(arrays((3, 4), 15))
    w = mc.tensor(np.ones(4), dtype=np.float64, requires_grad=True)
    cross_entropy(x, mc.tensor(np.array([0, 1, 2])), weight=w).backward()
    assert x.grad is not None and w.grad is None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_parity(dtype, reduction):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((3, 4, 2)).astype(dtype)
    target = rng.integers(0, 4, (3, 2))
    target[0, 1] = IGNORE
    kwargs = {"weight": rng.uniform(0.5, 2, 4), "reduction": reduction, "label_smoothing": 0.1}
    tol = {"rtol": 1e-5, "atol": 1e-6}
    assert_cuda_parity(lambda t: _call(cross_entropy, t, target, kwargs, dtype), x, **tol)
    assert_cuda_parity(lambda t: _call(nll_loss, t, target, _nll_kwargs(kwargs), dtype), x, **tol)


@pytest.mark.cuda
@settings(max_examples=4)
@given(problem=problems(max_spatial=1))
def test_cuda_matches_oracle(problem):
    # CUDA against the NumPy oracle, its gradient by central differences of the oracle
    x, target, kwargs = problem
    assume(not (kwargs["reduction"] == "mean" and np.all(target == kwargs["ignore_index"])))

    def oracle(x, gy):
        loss = lambda z: ref.cross_entropy(z, target, **kwargs)
        return loss(x), [numerical_gradient(loss, x, gy)]

    fn = lambda t: _call(cross_entropy, t, target, kwargs)
    assert_matches_oracle(fn, [x], oracle, "cuda", rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
def test_cuda_out_of_range_label_raises_at_the_next_read():
    # as a CUDA device-side assert: the label check runs on the device and the error comes
    # at the next host read of any device value, naming the op and the first bad label
    x = mc.tensor(np.zeros((2, 3)), device="cuda", requires_grad=True)
    target = mc.tensor(np.array([0, 3, -1, 1]).reshape(2, 2)[:, 1].copy(), device="cuda")
    loss = cross_entropy(x, target, reduction="sum")  # nothing read yet: no error
    loss.backward()
    with pytest.raises(IndexError, match=r"cross_entropy: target 3 is out of bounds for 3 cl"):
        loss.item()
    assert np.isnan(x.grad.numpy()[0]).all()  # the bad row gave NaN, no out-of-bounds read
    other = mc.tensor(np.ones(2), device="cuda")
    np.testing.assert_array_equal(other.numpy(), 1.0)  # raised once, then cleared


@pytest.mark.cuda
def test_cuda_first_bad_label_in_program_order_wins():
    x = mc.tensor(np.zeros((5, 4)), device="cuda")
    good = mc.tensor(np.array([0, 1, 2, 3, -100]), device="cuda")
    nll_loss(x, good)
    cross_entropy(x, mc.tensor(np.array([0, 1, 9, -5, 3]), device="cuda"))
    nll_loss(x, mc.tensor(np.array([7, 0, 0, 0, 0]), device="cuda"))
    with pytest.raises(IndexError, match=r"^cross_entropy: target 9 is out of bounds for 4 cl"):
        mc.device.synchronize()
    cross_entropy(x, good).item()  # nothing pending any more


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 70),
    classes=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_label_check_finds_the_first_bad_label(dev, n, classes, seed):
    # the label-check kernel against the host rule, with bad labels anywhere (C itself
    # included; n > the simulator's 32 threads, so some threads own several labels). The
    # CPU raises at the call, CUDA at the next read.
    rng = np.random.default_rng(seed)
    t = rng.integers(-3, classes + 3, n)
    t[rng.random(n) < 0.5] = -100
    t[rng.integers(0, n)] = classes if rng.random() < 0.3 else t[0]
    bad = (t != -100) & ((t < 0) | (t >= classes))
    x = mc.tensor(np.zeros((n, classes)), device=dev)
    if not bad.any():
        loss = cross_entropy(x, mc.tensor(t, device=dev), reduction="sum")
        assert loss.item() == pytest.approx(np.log(classes) * np.sum(t != -100))
        return
    first = int(t[bad][0])
    with pytest.raises(IndexError, match=rf"target {first} is out of bounds for {classes} "):
        cross_entropy(x, mc.tensor(t, device=dev), reduction="sum").item()
