"""SGD, Adam and AdamW: several steps against the update formulas written out in NumPy and
against ``torch.optim`` on identical parameters and gradients (float64)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam import optim

SHAPES = [(3,), (2, 4)]
STEPS = 4


def make_params(seed, shapes=SHAPES, dtype=np.float64, device="cpu"):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return arrays, [mc.tensor(a, dtype=dtype, device=device, requires_grad=True) for a in arrays]


def make_grads(seed, shapes=SHAPES, steps=STEPS, dtype=np.float64):
    rng = np.random.default_rng(seed + 1)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def run_minicbam(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = mc.tensor(g, dtype=g.dtype, device=p.device)
        opt.step()
    return [p.numpy() for p in params]


# ----------------------------------------------------------------------------- NumPy oracles
def sgd_reference(p, grads, lr, momentum, dampening, weight_decay, nesterov):
    p, buf = p.copy(), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_reference(p, grads, lr, betas, eps, weight_decay, amsgrad=False, decoupled=False):
    p = p.copy()
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        vmax = np.maximum(vmax, v)
        vhat = (vmax if amsgrad else v) / (1 - betas[1] ** t)
        p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(vhat) + eps)
    return p


def per_param_grads(grads, i):
    return [step[i] for step in grads]


# ----------------------------------------------------------------------------- strategies
lrs = st.floats(1e-4, 1.0)
decays = st.sampled_from([0.0, 1e-3, 0.1])
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.9999))
seeds = st.integers(0, 2**16)


@st.composite
def sgd_settings(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0.0, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 1.0))
    return {
        "lr": draw(lrs),
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": draw(decays),
        "nesterov": nesterov,
    }


@st.composite
def adam_settings(draw):
    eps = draw(st.sampled_from([1e-8, 1e-3]))
    return {
        "lr": draw(lrs),
        "betas": draw(betas),
        "eps": eps,
        "weight_decay": draw(decays),
        "amsgrad": draw(st.booleans()),
    }


# ----------------------------------------------------------------------------- vs formulas
@given(settings=sgd_settings(), seed=seeds)
def test_sgd_matches_formula(settings, seed):
    arrays, params = make_params(seed)
    grads = make_grads(seed)
    got = run_minicbam(optim.SGD(params, **settings), params, grads)
    for i, a in enumerate(arrays):
        want = sgd_reference(a, per_param_grads(grads, i), **settings)
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@given(settings=adam_settings(), seed=seeds)
def test_adam_matches_formula(cls, settings, seed):
    arrays, params = make_params(seed)
    grads = make_grads(seed)
    got = run_minicbam(cls(params, **settings), params, grads)
    for i, a in enumerate(arrays):
        want = adam_reference(
            a, per_param_grads(grads, i), decoupled=cls is optim.AdamW, **settings
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)


def test_first_sgd_step_ignores_dampening():
    p = mc.tensor([1.0, 2.0], dtype=mc.float64, requires_grad=True)
    run_minicbam(
        optim.SGD([p], lr=0.5, momentum=0.9, dampening=0.7), [p], [[np.array([2.0, -4.0])]]
    )
    np.testing.assert_array_equal(p.numpy(), [0.0, 4.0])  # p - lr * g: the buffer is g itself


def test_params_keep_identity_and_dtype():
    _, params = make_params(0, dtype=np.float32)
    before = [id(p) for p in params]
    got = run_minicbam(optim.Adam(params, lr=0.1), params, make_grads(0, dtype=np.float32))
    assert [id(p) for p in params] == before
    assert all(g.dtype == np.float32 for g in got)
    assert all(p.requires_grad and p.is_leaf for p in params)


def test_params_without_grad_are_skipped():
    arrays, params = make_params(1)
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = mc.ones_like(params[0])
    opt.step()
    np.testing.assert_array_equal(params[1].numpy(), arrays[1])
    assert params[1] not in opt.state


def test_param_groups_have_their_own_hyper_parameters():
    arrays, params = make_params(2)
    grads = make_grads(2)
    opt = optim.SGD(
        [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.5}], lr=0.1, momentum=0.9
    )
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    got = run_minicbam(opt, params, grads)
    for i, lr in enumerate([0.1, 0.5]):
        want = sgd_reference(arrays[i], per_param_grads(grads, i), lr, 0.9, 0.0, 0.0, False)
        np.testing.assert_allclose(got[i], want, rtol=1e-12)


def test_zero_grad():
    _, params = make_params(3)
    opt = optim.SGD(params, lr=0.1)
    for p in params:
        p.grad = mc.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) and p.grad.shape == p.shape for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_step_with_closure_and_backward():
    p = mc.tensor([3.0, -1.0], dtype=mc.float64, requires_grad=True)
    opt = optim.SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with mc.no_grad():  # the closure still records its graph
        loss = opt.step(closure)
    assert loss.item() == 10.0
    np.testing.assert_allclose(p.numpy(), [1.5, -0.5])  # p - 0.25 * 2p


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
def test_step_bumps_the_version_of_updated_params(cls):
    p = mc.tensor([3.0, -1.0], dtype=mc.float64, requires_grad=True)
    frozen = mc.tensor([1.0], dtype=mc.float64, requires_grad=True)  # no grad: not updated
    opt = cls([p, frozen], lr=0.1)
    loss = (p * p).sum()  # saves p
    p.grad = mc.ones_like(p)
    before = (p._version, frozen._version)
    opt.step()
    assert (p._version, frozen._version) == (before[0] + 1, before[1])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # as torch: the graph saved the old p


# ----------------------------------------------------------------------------- vs torch
def run_torch(torch, cls_name, kwargs, arrays, grads):
    params = [torch.tensor(a, requires_grad=True) for a in arrays]
    opt = getattr(torch.optim, cls_name)(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


@given(settings=sgd_settings(), seed=seeds)
def test_sgd_matches_torch(settings, seed):
    torch = pytest.importorskip("torch")
    arrays, params = make_params(seed)
    grads = make_grads(seed)
    got = run_minicbam(optim.SGD(params, **settings), params, grads)
    want = run_torch(torch, "SGD", settings, arrays, grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@given(settings=adam_settings(), seed=seeds)
def test_adam_matches_torch(name, settings, seed):
    torch = pytest.importorskip("torch")
    arrays, params = make_params(seed)
    grads = make_grads(seed)
    got = run_minicbam(getattr(optim, name)(params, **settings), params, grads)
    want = run_torch(torch, name, settings, arrays, grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_adamw_default_weight_decay_matches_torch():
    torch = pytest.importorskip("torch")
    arrays, params = make_params(5)
    grads = make_grads(5)
    opt = optim.AdamW(params)
    assert opt.defaults["weight_decay"] == 1e-2
    got = run_minicbam(opt, params, grads)
    for a, b in zip(got, run_torch(torch, "AdamW", {}, arrays, grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


# ----------------------------------------------------------------------------- errors
def one_param():
    return [mc.zeros(2, requires_grad=True)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: optim.SGD(one_param(), lr=-0.1), "invalid learning rate"),
        (lambda: optim.SGD(one_param(), lr=math.nan), "invalid learning rate"),
        (lambda: optim.SGD(one_param(), momentum=-0.5), "invalid momentum"),
        (lambda: optim.SGD(one_param(), weight_decay=-1), "invalid weight_decay"),
        (lambda: optim.SGD(one_param(), nesterov=True), "Nesterov momentum requires"),
        (
            lambda: optim.SGD(one_param(), momentum=0.9, dampening=0.1, nesterov=True),
            "Nesterov momentum requires",
        ),
        (lambda: optim.Adam(one_param(), lr=-1e-3), "invalid learning rate"),
        (lambda: optim.Adam(one_param(), betas=(1.0, 0.999)), "beta parameter at index 0"),
        (lambda: optim.Adam(one_param(), betas=(0.9, -0.1)), "beta parameter at index 1"),
        (lambda: optim.AdamW(one_param(), betas=(0.9,)), "betas must be a pair"),
        (lambda: optim.Adam(one_param(), eps=-1e-8), "invalid epsilon"),
        (lambda: optim.SGD([], lr=0.1), "empty parameter list"),
        (lambda: optim.Adam(iter([])), "empty parameter list"),
        (lambda: optim.SGD([{"lr": 0.1}]), "needs a 'params' entry"),
        (lambda: optim.SGD([{"params": one_param(), "lr": -1.0}]), "invalid learning rate"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "params, message",
    [
        (mc.zeros(2, requires_grad=True), "got a single Tensor"),
        (5, "iterable of Tensors or dicts, got int"),
        ([np.zeros(2)], "parameter 0 is a ndarray"),
        ([mc.zeros(1, requires_grad=True), [1.0]], "parameter 1 is a list"),
    ],
)
def test_params_that_are_not_tensors_raise_type_error(params, message):
    with pytest.raises(TypeError, match=message):
        optim.SGD(params, lr=0.1)


def test_non_leaf_and_duplicate_params_are_rejected():
    x = mc.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([x * 2], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [x]}, {"params": [x]}], lr=0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True),
        lambda ps: optim.AdamW(ps, lr=0.1),
    ],
)
def test_step_updates_a_non_contiguous_parameter(make):
    # p.data set to a transposed view: the fused kernel has no 1-D view of it, and updating
    # a flattened copy would lose the step silently; the view (and its base) must change
    # exactly as a contiguous parameter does
    base = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    view = mc.tensor(np.zeros((3, 4)), requires_grad=True)
    view.data = base.T
    plain = mc.tensor(base.T.copy(), requires_grad=True)
    grads = make_grads(5, shapes=[(3, 4)], steps=3)
    got = run_minicbam(make([view]), [view], grads)[0]
    want = run_minicbam(make([plain]), [plain], grads)[0]
    assert not view.data.flags.c_contiguous and view.data.base is base  # still the view
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(base.T, want)
    assert not np.array_equal(want, np.arange(12).reshape(4, 3).T / 7)  # it did move
