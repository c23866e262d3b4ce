"""Tensor semantics beyond single ops, side by side with PyTorch where it is installed:
Python's number and array protocols, type promotion, NaN propagation, in-place ops and
version counters, and numerics at extreme values (docs/semantics.md).

Every test asserts minicbam's behaviour against its own expected values first, then (when
``torch`` imports) against PyTorch on the same inputs; without torch the first half still runs.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn, optim

try:
    import torch
except ImportError:  # the minicbam half of every test still runs
    torch = None

NAN = float("nan")
SEED = st.integers(0, 2**32 - 1)


def t_of(x):
    """The PyTorch twin of a minicbam tensor (same values and dtype)."""
    return torch.from_numpy(np.asarray(x.numpy()))


# ----------------------------------------------------------------------------- protocols
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@given(value=SCALARS, shape=st.sampled_from([(), (1,), (1, 1)]))
def test_one_element_tensors_convert_like_python_numbers(value, shape):
    t = mc.tensor(np.full(shape, value))
    v = np.asarray(value).item()
    assert bool(t) == bool(v)
    if not (isinstance(v, float) and not math.isfinite(v)):
        assert int(t) == int(v)
    assert float(t) == pytest.approx(float(v), nan_ok=True)
    if torch is not None:
        tt = torch.tensor(np.full(shape, value))
        assert bool(t) == bool(tt)
        assert float(t) == pytest.approx(float(tt), nan_ok=True)


@given(n=st.sampled_from([0, 2, 5]))
def test_truth_value_of_many_or_no_elements_is_ambiguous(n):
    t = mc.zeros(n)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(t)
    with pytest.raises(ValueError, match="one element"):
        float(t)
    if torch is not None:
        with pytest.raises(RuntimeError, match="ambiguous"):
            bool(torch.zeros(n))


def test_comparisons_of_0d_tensors_drive_if_max_and_sorted():
    losses = [mc.tensor(v) for v in (0.7, 0.2, 0.9)]
    best = mc.tensor(0.5)
    assert [bool(v < best) for v in losses] == [False, True, False]
    assert float(max(losses)) == pytest.approx(0.9)
    assert [float(v) for v in sorted(losses)] == pytest.approx([0.2, 0.7, 0.9])
    hits = 0
    for v in losses:
        if v > 0.5:  # the idiom the missing __bool__ got wrong
            hits += 1
    assert hits == 2
    assert not bool(mc.tensor([0.0]))  # was True (len fallback)


def test_format_asarray_iter_and_index():
    t = mc.tensor(3.14159)
    assert f"{t:.2f}" == "3.14" and f"{mc.tensor(7):>4d}" == "   7"
    with pytest.raises(TypeError):
        f"{mc.tensor([1.0, 2.0]):.2f}"  # only 0-d tensors take a format spec, as in PyTorch
    a = np.asarray(mc.tensor([[1.0, 2.0]]))
    assert a.dtype == np.float32 and a.tolist() == [[1.0, 2.0]]
    assert np.asarray(mc.tensor([1, 2]), dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="0-d"):
        iter(mc.tensor(1.0))
    assert [int(v) for v in mc.tensor([4, 5])] == [4, 5]
    assert [10, 11, 12][mc.tensor(2)] == 12
    with pytest.raises(TypeError, match="integer tensors"):
        [1, 2][mc.tensor(1.0)]
    assert isinstance(np.float64(2.0) * mc.tensor([1.0]), mc.Tensor)  # still defers to Tensor
    if torch is not None:
        assert f"{torch.tensor(3.14159):.2f}" == f"{t:.2f}"
        with pytest.raises(TypeError, match="0-d"):
            iter(torch.tensor(1.0))


# ----------------------------------------------------------------------------- promotion
DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]


def operand(kind, dtype):
    """A dimensioned tensor, a 0-d tensor or a Python number of ``dtype``'s kind."""
    values = np.array([1, 0, 1]) if dtype == "bool" else np.array([3, 1, 2])
    if kind == "number":
        return {"b": True, "u": 2, "i": 2, "f": 2.5}[np.dtype(dtype).kind]
    arr = values.astype(dtype)
    return mc.tensor(arr if kind == "tensor" else arr[0])


def twin(x):
    return t_of(x) if isinstance(x, mc.Tensor) else x


EXPECTED = [  # (a, b, op, dtype of the result): the rules, without torch
    (("tensor", "bool"), ("number", "bool"), "add", "bool"),
    (("tensor", "bool"), ("number", "int64"), "add", "int64"),
    (("tensor", "int32"), ("tensor", "int32"), "div", "float32"),
    (("tensor", "int8"), ("number", "int64"), "mul", "int8"),
    (("tensor", "float32"), ("tensor", "float64"), "add", "float64"),
    (("tensor", "float32"), ("scalar", "float64"), "add", "float32"),
    (("tensor", "float32"), ("number", "float64"), "mul", "float32"),
    (("tensor", "int64"), ("number", "float32"), "add", "float32"),
    (("tensor", "int32"), ("scalar", "float64"), "add", "float64"),
    (("tensor", "int64"), ("tensor", "float32"), "add", "float32"),
    (("tensor", "uint8"), ("tensor", "int8"), "add", "int16"),
]

OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "lt": lambda a, b: a < b,
}


@pytest.mark.parametrize("a, b, op, expected", EXPECTED)
def test_promotion_table(a, b, op, expected):
    y = OPS[op](operand(*a), operand(*b))
    assert y.dtype == np.dtype(expected)


@given(
    a=st.tuples(st.sampled_from(["tensor", "scalar"]), st.sampled_from(DTYPES)),
    b=st.tuples(st.sampled_from(["tensor", "scalar", "number"]), st.sampled_from(DTYPES)),
    op=st.sampled_from(sorted(OPS)),
    swap=st.booleans(),
)
def test_promotion_matches_pytorch(a, b, op, swap):
    x, y = operand(*a), operand(*b)
    if swap:
        x, y = y, x
    if op == "sub" and "bool" in (a[1], b[1]):
        return  # PyTorch refuses bool subtraction; minicbam's bool arithmetic is NumPy's
    out = OPS[op](x, y)
    assert out.dtype.kind in "biuf"
    if op == "div":
        assert out.dtype.kind == "f"  # true division never stays integer
    if op == "lt":
        assert out.dtype == np.bool_
    if torch is None:
        return
    expected = OPS[op](twin(x), twin(y))
    assert str(out.dtype) == str(expected.dtype).replace("torch.", "")
    np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy())


@given(n=st.integers(1, 300), seed=SEED)
def test_accuracy_idiom_counts_samples(n, seed):
    rng = np.random.default_rng(seed)
    pred, y = rng.integers(0, 3, n), rng.integers(0, 3, n)
    correct = (mc.tensor(pred) == mc.tensor(y)).sum()
    assert correct.dtype == np.int64 and correct.item() == int((pred == y).sum())
    if torch is not None:
        assert correct.item() == (torch.tensor(pred) == torch.tensor(y)).sum().item()


@given(
    dtype=st.sampled_from(["bool", "uint8", "int8", "int16", "int32", "int64"]),
    seed=SEED,
    dim=st.sampled_from([None, 0, 1]),
)
def test_integer_sums_are_exact_int64(dtype, seed, dim):
    info = np.iinfo(dtype) if dtype != "bool" else None
    rng = np.random.default_rng(seed)
    if info is None:
        x = rng.integers(0, 2, (7, 5)).astype(bool)
    else:
        x = rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), (7, 5)).astype(dtype)
    s = mc.tensor(x).sum(dim)
    assert s.dtype == np.int64
    np.testing.assert_array_equal(s.numpy(), x.astype(np.int64).sum(axis=dim))
    if torch is not None:
        expected = torch.from_numpy(x).sum() if dim is None else torch.from_numpy(x).sum(dim)
        np.testing.assert_array_equal(s.numpy(), expected.numpy())


def test_int8_sum_does_not_wrap_and_int64_sums_past_2_53_are_exact():
    assert mc.tensor(np.array([100, 100], np.int8)).sum().item() == 200
    big = np.array([2**53, 1, 1], np.int64)
    assert mc.tensor(big).sum().item() == 2**53 + 2


# ----------------------------------------------------------------------------- NaN
def nan_input(shape, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, shape).astype(dtype)
    x.flat[rng.integers(0, x.size)] = np.nan
    return x


NAN_OPS = {  # name: (minicbam fn, torch fn); inputs are (2, 3, 4, 4)
    "relu": (F.relu, lambda t, x: t.relu(x)),
    "clamp": (lambda x: x.clamp(-0.5, 0.5), lambda t, x: x.clamp(-0.5, 0.5)),
    "clamp_min": (lambda x: x.clamp(min=0.0), lambda t, x: x.clamp(min=0.0)),
    "clamp_max": (lambda x: x.clamp(max=0.0), lambda t, x: x.clamp(max=0.0)),
    "abs": (lambda x: x.abs(), lambda t, x: x.abs()),
    "sigmoid": (lambda x: x.sigmoid(), lambda t, x: x.sigmoid()),
    "tanh": (lambda x: x.tanh(), lambda t, x: x.tanh()),
    "amax": (lambda x: x.amax((2, 3)), lambda t, x: x.amax((2, 3))),
    "max_dim": (lambda x: x.max(1).values, lambda t, x: x.max(1).values),
    "softmax": (lambda x: F.softmax(x, 1), lambda t, x: t.softmax(x, 1)),
    "log_softmax": (lambda x: F.log_softmax(x, 1), lambda t, x: t.log_softmax(x, 1)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), lambda t, x: t.nn.functional.max_pool2d(x, 2)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), lambda t, x: t.nn.functional.avg_pool2d(x, 2)),
    "adaptive_max": (
        lambda x: F.adaptive_max_pool2d(x, 1),
        lambda t, x: t.nn.functional.adaptive_max_pool2d(x, 1),
    ),
    "adaptive_avg": (
        lambda x: F.adaptive_avg_pool2d(x, 2),
        lambda t, x: t.nn.functional.adaptive_avg_pool2d(x, 2),
    ),
    "channel_pool": (
        lambda x: mc.ops.channel_pool(x),
        lambda t, x: t.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1),
    ),
    "batch_norm": (
        lambda x: F.batch_norm(x, None, None, training=True),
        lambda t, x: t.nn.functional.batch_norm(x, None, None, training=True),
    ),
    "cross_entropy": (
        lambda x: F.cross_entropy(x, mc.zeros(2, 4, 4, dtype=mc.int64), reduction="none"),
        lambda t, x: t.nn.functional.cross_entropy(
            x, t.zeros(2, 4, 4, dtype=t.int64), reduction="none"
        ),
    ),
    "linear_relu": (
        lambda x: F.relu(F.linear(x, mc.ones(3, 4))),
        lambda t, x: t.relu(t.nn.functional.linear(x, t.ones(3, 4))),
    ),
}


@pytest.mark.parametrize("name", sorted(NAN_OPS))
@given(seed=SEED)
def test_nan_propagates_through_every_op_family(name, seed):
    x = nan_input((2, 3, 4, 4), seed)
    fn, torch_fn = NAN_OPS[name]
    y = fn(mc.tensor(x)).numpy()
    assert np.isnan(y).any(), f"{name} dropped the NaN"
    if torch is not None:
        expected = torch_fn(torch, torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_a_corrupt_input_does_not_give_finite_logits():
    mc.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = mc.tensor([[1.0, NAN, 0.0, 2.0]])
    assert np.isnan(model(x).numpy()).all()


@given(seed=SEED)
def test_nan_gradients_match_pytorch(seed):
    x = nan_input((6,), seed, np.float64)
    for name, fn in [
        ("relu", lambda v: v.relu()),
        ("clamp", lambda v: v.clamp(-0.5, 0.5)),
        ("abs", lambda v: v.abs()),
        ("amax", lambda v: v.amax()),
    ]:
        a = mc.tensor(x, requires_grad=True)
        fn(a).sum().backward()
        g = a.grad.numpy()
        if name == "amax":
            assert np.isnan(g).all()  # no element equals a NaN maximum: 0/0, as PyTorch
        if torch is not None:
            b = torch.tensor(x, requires_grad=True)
            fn(b).sum().backward()
            np.testing.assert_array_equal(g, b.grad.numpy(), err_msg=name)


# ----------------------------------------------------------------------------- in-place
INPLACE = {  # name: (minicbam call, its torch twin)
    "add_": (lambda t, o: t.add_(o), lambda t, o: t.add_(o)),
    "add_alpha": (lambda t, o: t.add_(o, alpha=-0.5), lambda t, o: t.add_(o, alpha=-0.5)),
    "sub_": (lambda t, o: t.sub_(o), lambda t, o: t.sub_(o)),
    "mul_": (lambda t, o: t.mul_(o), lambda t, o: t.mul_(o)),
    "div_": (lambda t, o: t.div_(o), lambda t, o: t.div_(o)),
    "iadd": (lambda t, o: t.__iadd__(o), lambda t, o: t.__iadd__(o)),
    "isub": (lambda t, o: t.__isub__(o), lambda t, o: t.__isub__(o)),
    "imul": (lambda t, o: t.__imul__(o), lambda t, o: t.__imul__(o)),
    "itruediv": (lambda t, o: t.__itruediv__(o), lambda t, o: t.__itruediv__(o)),
    "clamp_": (lambda t, o: t.clamp_(-0.5, 0.5), lambda t, o: t.clamp_(-0.5, 0.5)),
    "fill_": (lambda t, o: t.fill_(1.5), lambda t, o: t.fill_(1.5)),
    "zero_": (lambda t, o: t.zero_(), lambda t, o: t.zero_()),
    "copy_": (lambda t, o: t.copy_(o), lambda t, o: t.copy_(o)),
}


def other_operand(kind, rng):
    if kind == "number":
        return float(rng.uniform(0.5, 2))
    if kind == "row":
        return mc.tensor(rng.uniform(0.5, 2, (4,)))
    return mc.tensor(rng.uniform(0.5, 2, (3, 4)))


@pytest.mark.parametrize("name", sorted(INPLACE))
@given(seed=SEED, kind=st.sampled_from(["number", "row", "full"]))
def test_inplace_ops_write_the_buffer_and_bump_the_version(name, seed, kind):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-2, 2, (3, 4)).astype(np.float32)
    other = other_operand(kind, rng)
    if name == "copy_" and kind == "number":
        other = other_operand("row", rng)
    t = mc.tensor(x0)
    alias, array = t.detach(), t.data
    out = INPLACE[name][0](t, other)
    assert out is t and t.data is array and t._version == 1  # same object, same buffer
    np.testing.assert_array_equal(alias.numpy(), t.numpy())  # views see the change
    if torch is not None:
        tt = torch.from_numpy(x0.copy())
        INPLACE[name][1](tt, twin(other) if isinstance(other, mc.Tensor) else other)
        np.testing.assert_allclose(t.numpy(), tt.numpy(), rtol=1e-6)
        assert t._version == tt._version


def test_tutorial_loop_under_no_grad_keeps_the_leaf():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16,))
    w = mc.tensor(np.zeros(3), requires_grad=True)
    for _ in range(5):
        loss = ((mc.tensor(x) @ w - mc.tensor(y)) ** 2).mean()
        loss.backward()
        with mc.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()
        assert w.is_leaf and w.requires_grad
    if torch is not None:
        wt = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        for _ in range(5):
            loss_t = ((torch.tensor(x) @ wt - torch.tensor(y)) ** 2).mean()
            loss_t.backward()
            with torch.no_grad():
                wt -= 0.1 * wt.grad
                wt.grad.zero_()
        np.testing.assert_allclose(w.numpy(), wt.detach().numpy(), rtol=1e-12)


def test_inplace_on_a_non_leaf_joins_the_graph_as_in_pytorch():
    x0 = np.array([0.5, -1.0, 2.0])
    x = mc.tensor(x0, requires_grad=True)
    h = x * x
    h.mul_(3.0)
    h += x
    h.clamp_(max=5.0)
    h.sum().backward()
    assert not h.is_leaf and h._version == 3
    if torch is not None:
        xt = torch.tensor(x0, requires_grad=True)
        ht = xt * xt
        ht.mul_(3.0)
        ht += xt
        ht.clamp_(max=5.0)
        ht.sum().backward()
        np.testing.assert_allclose(h.detach().numpy(), ht.detach().numpy())
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy())
    else:
        np.testing.assert_allclose(x.grad.numpy(), np.where(3 * x0**2 + x0 <= 5, 6 * x0 + 1, 0))


SAVING_OPS = {  # name: f(w, x) whose backward needs w's values
    "mul": lambda w, x: (w * x).sum(),
    "div": lambda w, x: (x / w).sum(),
    "pow": lambda w, x: (w**2).sum(),
    "exp": lambda w, x: w.exp().sum(),
    "sigmoid": lambda w, x: w.sigmoid().sum(),
    "matmul": lambda w, x: (x.reshape(1, 3) @ w.reshape(3, 1)).sum(),
    "linear": lambda w, x: F.linear(x.reshape(1, 3), w.reshape(1, 3)).sum(),
    "relu_mul": lambda w, x: (F.relu(w) * x).sum(),
}


def _step(kind, w):
    if kind == "sgd":
        optim.SGD([w], lr=0.1).step()
    elif kind == "sgd_momentum":
        optim.SGD([w], lr=0.1, momentum=0.9).step()
    elif kind == "adam":
        optim.Adam([w], lr=0.1).step()
    elif kind == "adamw":
        optim.AdamW([w], lr=0.1).step()
    else:
        with mc.no_grad():
            getattr(w, kind)(0.5)


@pytest.mark.parametrize("name", sorted(SAVING_OPS))
@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "adam", "adamw", "sub_", "mul_"])
def test_backward_after_an_inplace_change_of_a_saved_tensor_raises(name, kind):
    w = mc.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x = mc.tensor([1.0, 2.0, 3.0])
    (w * 1.0).sum().backward()  # the optimizers need a gradient to step
    y = SAVING_OPS[name](w, x)
    _step(kind, w)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_the_error_names_the_op_and_unsaved_inputs_do_not_raise():
    w = mc.tensor([1.0, 2.0], requires_grad=True)
    y = w.exp().sum()
    with mc.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match=r"input 0 of Exp .*version 1"):
        y.backward()
    z = (w + 1.0).sum() + (w - mc.ones(2)).sum()  # add and sub save nothing: PyTorch is fine
    with mc.no_grad():
        w.mul_(2.0)
    z.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 2.0])
    h = w * 2.0
    e = h.exp()
    with mc.no_grad():
        e.zero_()  # exp saved its output
    with pytest.raises(RuntimeError, match="its output of Exp"):
        e.sum().backward()


def test_modified_weights_would_change_the_gradient_which_is_why_it_raises():
    """Without the check, Adam's in-place step (unlike a rebinding one) leaked into backward."""
    w = mc.tensor([1.0, 2.0], requires_grad=True)
    y = (w * w).sum()
    w.grad = mc.ones(2)
    optim.Adam([w], lr=0.5).step()
    assert w._version == 1
    with pytest.raises(RuntimeError, match="Mul"):
        y.backward()
    if torch is not None:
        wt = torch.tensor([1.0, 2.0], requires_grad=True)
        yt = (wt * wt).sum()
        wt.grad = torch.ones(2)
        torch.optim.Adam([wt], lr=0.5).step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            yt.backward()
        np.testing.assert_allclose(w.detach().numpy(), wt.detach().numpy(), rtol=1e-6)


def test_inplace_in_a_training_step_after_backward_is_fine():
    mc.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, t = mc.randn(4, 3), mc.tensor(np.array([0, 1, 1, 0]))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), t).backward()
        opt.step()
    assert model.weight._version == 3


# ----------------------------------------------------------------------------- extremes
SCALES32 = [1.0, 1e4, 1e10, 1e20, 1e30, 1e37]
SCALES64 = [1.0, 1e8, 1e15, 1e100, 1e300]


def _ce_case(scale, dtype, C, smoothing):
    x = np.full((2, C), scale, dtype=dtype)
    x[1, 1:] = -scale  # row 1: one logit far above the others
    target = np.array([0, 0])
    return x, target, smoothing


@pytest.mark.parametrize(
    "dtype, scale", [(np.float32, s) for s in SCALES32] + [(np.float64, s) for s in SCALES64]
)
@given(C=st.integers(2, 6), smoothing=st.sampled_from([0.0, 0.1]))
def test_cross_entropy_at_huge_logits(dtype, scale, C, smoothing):
    x, target, eps = _ce_case(scale, dtype, C, smoothing)
    xt = mc.tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, mc.tensor(target), reduction="none", label_smoothing=eps)
    loss.sum().backward()
    y = loss.numpy()
    # row 0: C equal logits, loss log C whatever the scale
    np.testing.assert_allclose(y[0], math.log(C), rtol=1e-6)
    assert np.isfinite(y).all()
    g = xt.grad.numpy()
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-6)  # p - q sums to 0 per row
    probs = F.softmax(mc.tensor(x), 1).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    if torch is not None:
        xtt = torch.tensor(x, requires_grad=True)
        lt = torch.nn.functional.cross_entropy(
            xtt, torch.tensor(target), reduction="none", label_smoothing=eps
        )
        lt.sum().backward()
        np.testing.assert_allclose(y, lt.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(g, xtt.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_losses_and_gates_at_huge_logits(scale):
    x = np.array([scale, -scale, scale, -scale], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    bce = mc.ops.binary_cross_entropy_with_logits(mc.tensor(x), mc.tensor(t), reduction="none")
    x64 = x.astype(np.float64)  # softplus(x) - t x, overflow-free
    expected = np.maximum(x64, 0) + np.log1p(np.exp(-np.abs(x64))) - t * x64
    np.testing.assert_allclose(bce.numpy(), expected, rtol=1e-6, atol=1e-6)
    s = mc.tensor(x).sigmoid().numpy()
    assert np.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    g = mc.ops.gate(mc.ones(1, 4, 1, 1), mc.tensor(x.reshape(1, 4, 1, 1))).numpy()
    np.testing.assert_allclose(g.ravel(), s, rtol=1e-6)
    if torch is not None:
        bt = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.tensor(x), torch.tensor(t), reduction="none"
        )
        np.testing.assert_allclose(bce.numpy(), bt.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s, torch.tensor(x).sigmoid().numpy(), rtol=1e-6)


@pytest.mark.parametrize("scale, dtype, tol", [(1e8, np.float64, 1e-6), (1e4, np.float32, 3e-3)])
def test_batch_norm_at_a_large_offset(scale, dtype, tol):
    """x = offset + N(0, 1): the variance must not drown in the offset's rounding."""
    rng = np.random.default_rng(0)
    x = (scale + rng.normal(size=(8, 2, 3, 3))).astype(dtype)
    y = F.batch_norm(mc.tensor(x), None, None, training=True).numpy()
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(0, 2, 3), keepdims=True), x64.var(axis=(0, 2, 3), keepdims=True)
    err = np.abs(y - (x64 - mu) / np.sqrt(var + 1e-5)).max()
    assert err < tol
    if torch is not None:
        yt = torch.nn.functional.batch_norm(torch.tensor(x), None, None, training=True).numpy()
        # y = x * scale + shift (one multiply-add) may lose a few ulps of x more than
        # PyTorch's (x - mu) * invstd; the same order of error, not a drowned variance
        assert err <= 4 * np.abs(yt - (x64 - mu) / np.sqrt(var + 1e-5)).max() + 1e-12


BOUNDARY_GRADS = {  # name: (fn, points, the gradient PyTorch defines there)
    "pow0": (lambda v: v**0, [0.0, -2.0, 3.0], [0.0, 0.0, 0.0]),
    "pow0.5": (lambda v: v**0.5, [0.0], [math.inf]),
    "pow2": (lambda v: v**2, [0.0], [0.0]),
    "pow3": (lambda v: v**3, [0.0, -1.0], [0.0, 3.0]),
    "sqrt": (lambda v: v.sqrt(), [0.0], [math.inf]),
    "abs": (lambda v: v.abs(), [0.0, -1.0], [0.0, -1.0]),
    "relu": (lambda v: v.relu(), [0.0], [0.0]),
    "clamp": (lambda v: v.clamp(-1.0, 1.0), [-1.0, 1.0, 2.0], [1.0, 1.0, 0.0]),
    "clamp_min": (lambda v: v.clamp(min=0.0), [0.0], [1.0]),
    "amax_tie": (lambda v: v.amax(), [1.0, 1.0], [0.5, 0.5]),
}


@pytest.mark.parametrize("name", sorted(BOUNDARY_GRADS))
def test_gradients_at_boundary_points_are_pytorchs(name):
    fn, points, expected = BOUNDARY_GRADS[name]
    x = mc.tensor(np.array(points), requires_grad=True)
    fn(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    if torch is not None:
        xt = torch.tensor(np.array(points), requires_grad=True)
        fn(xt).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())


def test_batch_norm_eps_zero_is_refused_in_training_only_as_in_pytorch():
    x = mc.randn(4, 3)
    with pytest.raises(ValueError, match="eps must be positive"):
        F.batch_norm(x, None, None, training=True, eps=0.0)
    y = F.batch_norm(x, mc.zeros(3), mc.ones(3), training=False, eps=0.0)
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize(
    "dtype", ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]
)
def test_every_supported_dtype_enters_and_computes(dtype):
    x = mc.tensor(np.array([1, 0, 1]).astype(dtype))
    assert x.dtype == np.dtype(dtype)
    assert mc.zeros(2, dtype=dtype).dtype == np.dtype(dtype)
    assert (x + x).dtype.kind in "biuf" and (x * 2).numpy().tolist() == [2, 0, 2]
    assert x.to(mc.float64).dtype == np.float64
    assert x.sum().item() == 2


def test_copy_into_a_non_leaf_cuts_the_old_values_gradient():
    x = mc.tensor([1.0, 2.0], requires_grad=True)
    h = x + 1.0
    h.copy_(mc.tensor([5.0, 6.0]))
    (h * x).sum().backward()
    np.testing.assert_array_equal(h.detach().numpy(), [5.0, 6.0])
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 6.0])  # only through h * x
    if torch is not None:
        xt = torch.tensor([1.0, 2.0], requires_grad=True)
        ht = xt + 1.0
        ht.copy_(torch.tensor([5.0, 6.0]))
        (ht * xt).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), xt.grad.numpy())
