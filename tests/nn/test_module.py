"""``nn.Module`` machinery: registration, traversal, state dicts, modes, devices, repr.

These tests use layers only for their parameters and buffers (no forward), so they need no
functional op beyond the Tensor operators.
"""

import copy
import re

import numpy as np
import pytest

import minicbam as mc
from minicbam import nn


class Affine(nn.Module):
    """y = x * scale + shift, with a non-persistent buffer and a plain tensor attribute."""

    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(mc.ones(n))
        self.shift = nn.Parameter(mc.zeros(n))
        self.register_buffer("count", mc.zeros(1))
        self.register_buffer("scratch", mc.zeros(2), persistent=False)
        self.plain = mc.zeros(3)  # a Tensor, not a Parameter: an ordinary attribute

    def forward(self, x):
        return x * self.scale + self.shift


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.ModuleList([Affine(2), Affine(2)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 5))


def test_registration_order_and_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "conv.weight",
        "bn.weight",
        "bn.bias",
        "blocks.0.scale",
        "blocks.0.shift",
        "blocks.1.scale",
        "blocks.1.shift",
        "head.1.weight",
        "head.1.bias",
    ]
    assert [n for n, _ in net.named_buffers()] == [
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "blocks.0.count",
        "blocks.0.scratch",
        "blocks.1.count",
        "blocks.1.scratch",
    ]
    assert [n for n, _ in net.named_children()] == ["conv", "bn", "blocks", "head"]
    names = [n for n, _ in net.named_modules()]
    assert names[:4] == ["", "conv", "bn", "blocks"] and "head.1" in names
    assert len(list(net.modules())) == len(names) == 9
    assert net.conv.bias is None and "conv.bias" not in net.state_dict()


def test_plain_tensor_is_not_registered_and_reassignment_moves_registries():
    m = Affine(2)
    assert "plain" not in dict(m.named_parameters()) and "plain" not in dict(m.named_buffers())
    m.plain = nn.Parameter(mc.zeros(3))  # now it is a parameter
    assert "plain" in dict(m.named_parameters()) and "plain" not in m.__dict__
    del m.plain
    assert "plain" not in dict(m.named_parameters())
    with pytest.raises(AttributeError):
        m.plain  # noqa: B018
    with pytest.raises(TypeError, match="parameter 'scale'"):
        m.scale = mc.zeros(2)
    m.count = mc.ones(1)  # a Tensor replaces a buffer and stays one
    assert dict(m.named_buffers())["count"] is m.count


def test_parameter_is_a_leaf_sharing_its_array():
    t = mc.randn(3)
    p = nn.Parameter(t)
    assert isinstance(p, mc.Tensor) and p.is_leaf and p.requires_grad
    assert p.data is t.data
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad
    assert repr(p).startswith("Parameter containing:\ntensor(")
    with pytest.raises(TypeError):
        nn.Parameter("weights")


def test_registration_errors():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(mc.zeros(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Forgot()
    m = nn.Module()
    with pytest.raises(KeyError, match="'.'"):
        m.register_buffer("a.b", mc.zeros(1))
    with pytest.raises(TypeError):
        m.register_parameter("w", mc.zeros(1))
    with pytest.raises(TypeError):
        m.add_module("x", 3)
    with pytest.raises(NotImplementedError, match="forward"):
        m(mc.zeros(1))


def test_shared_parameters_are_counted_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert seq.num_parameters() == 12
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_state_dict_is_host_copies_with_pytorch_keys():
    net = Net()
    sd = net.state_dict()
    assert "blocks.0.scratch" not in sd  # non-persistent
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"].ndim == 0
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["bn.running_var"][:] = 7.0  # a copy: the module is untouched
    assert np.all(net.bn.running_var.numpy() == 1.0)
    assert net.state_dict(keep_vars=True)["bn.weight"] is net.bn.weight


def test_load_state_dict_copies_into_existing_parameters():
    src, dst = Net(), Net()
    weight = dst.conv.weight
    array = weight.data
    sd = src.state_dict()
    sd["bn.num_batches_tracked"] = np.array(5.0)  # cast to the buffer's int64
    sd["head.1.bias"] = mc.tensor(sd["head.1.bias"].astype(np.float64))  # Tensor, cast
    result = dst.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert dst.conv.weight is weight and weight.data is array  # optimizers keep references
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value if "num" not in key else 5)
    assert dst.head[1].bias.dtype == np.float32
    assert dst.bn.num_batches_tracked.dtype == np.int64


def test_load_state_dict_reports_every_problem_by_name():
    net = Net()
    sd = net.state_dict()
    del sd["bn.running_mean"]
    sd["extra.weight"] = np.zeros(1)
    sd["head.1.weight"] = np.zeros((10, 8), np.float32)
    before = net.conv.weight.numpy()
    sd["conv.weight"] = before + 1
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    assert msg.startswith("Error(s) in loading state_dict for Net:")
    assert 'Missing key(s) in state_dict: "bn.running_mean"' in msg
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in msg
    assert (
        "size mismatch for head.1.weight: copying a param with shape (10, 8) from checkpoint, "
        "the shape in current model is (5, 8)" in msg
    )
    np.testing.assert_array_equal(net.conv.weight.numpy(), before)  # nothing was copied


def test_load_state_dict_refuses_a_transposed_value_of_the_same_size():
    net = Net()
    sd = net.state_dict()
    sd["head.1.weight"] = sd["head.1.weight"].T.copy()  # (8, 5): same size, other shape
    with pytest.raises(RuntimeError, match=r"size mismatch for head.1.weight: .* \(8, 5\)"):
        net.load_state_dict(sd)


def test_load_state_dict_non_strict_returns_keys_but_still_checks_shapes():
    net = Net()
    sd = net.state_dict()
    del sd["conv.weight"]
    sd["extra"] = np.zeros(1)
    sd["bn.bias"] = sd["bn.bias"] + 2
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["conv.weight"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net.bn.bias.numpy(), 2.0)
    sd["bn.bias"] = np.zeros(3)
    with pytest.raises(RuntimeError, match="size mismatch for bn.bias"):
        net.load_state_dict(sd, strict=False)


def test_train_eval_propagate():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.head.train()
    assert net.head[1].training and not net.bn.training
    net.train()
    assert all(m.training for m in net.modules())


def test_to_float64_keeps_identity_and_int_buffers():
    net = Net()
    params = list(net.parameters())
    net.conv.weight.grad = mc.ones(*net.conv.weight.shape)
    assert net.double() is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.bn.running_mean.dtype == np.float64
    assert net.bn.num_batches_tracked.dtype == np.int64
    assert net.conv.weight.grad.dtype == np.float64
    net.to(mc.float32)
    assert all(p.dtype == np.float32 for p in params)
    with pytest.raises(TypeError):
        net.to(mc.int64)


def test_zero_grad_requires_grad_and_apply():
    net = Net()
    for p in net.parameters():
        p.grad = mc.ones(*p.shape)
    net.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen[-1] == "Net" and seen.count("Affine") == 2


def test_containers():
    seq = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Sigmoid())
    assert len(seq) == 3 and isinstance(seq[-1], nn.Sigmoid)
    assert [type(m).__name__ for m in seq[1:]] == ["Tanh", "Sigmoid"]
    assert list(seq._modules) == ["0", "1", "2"]
    seq.append(nn.Identity())
    assert isinstance(seq[3], nn.Identity)
    with pytest.raises(IndexError):
        seq[4]
    lst = nn.ModuleList([nn.ReLU()])
    lst.append(nn.Tanh())
    lst.extend([nn.Sigmoid()])
    lst.insert(0, nn.Identity())
    assert [type(m).__name__ for m in lst] == ["Identity", "ReLU", "Tanh", "Sigmoid"]
    assert list(lst._modules) == ["0", "1", "2", "3"]
    del lst[1]
    assert [type(m).__name__ for m in lst] == ["Identity", "Tanh", "Sigmoid"]
    assert list(lst._modules) == ["0", "1", "2"]


def test_sequential_forward_chains():
    seq = nn.Sequential(Affine(2), Affine(2))
    seq[0].scale.data[:] = 2.0
    seq[1].shift.data[:] = 1.0
    np.testing.assert_allclose(seq(mc.tensor([1.0, 3.0])).numpy(), [3.0, 7.0])


def test_repr_reads_like_pytorch():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(inplace=True))
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)\n"
        "  (1): ReLU(inplace=True)\n"
        ")"
    )
    assert repr(nn.Linear(2, 3)) == "Linear(in_features=2, out_features=3, bias=True)"


def test_constructor_validation():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 6, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        nn.Conv2d(3, 6, 0)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        nn.Conv2d(3, 6, 3, padding=-1)
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="half of the kernel"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, -1)


def test_deepcopy_gives_independent_parameters():
    net = Net()
    clone = copy.deepcopy(net)
    assert list(clone.state_dict()) == list(net.state_dict())
    assert clone.conv.weight is not net.conv.weight
    clone.conv.weight.data[...] = 0.0
    assert np.any(net.conv.weight.numpy() != 0)


@pytest.mark.cuda
def test_load_state_dict_and_to_on_cuda():
    src, dst = Net(), Net()
    dst.to("cuda")
    weight, array = dst.conv.weight, dst.conv.weight.data
    dst.load_state_dict(src.state_dict())
    assert dst.conv.weight is weight and weight.data is array and weight.device == "cuda"
    assert dst.bn.num_batches_tracked.device == "cuda"
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value)
    dst.double().cpu()
    assert weight.device == "cpu" and weight.dtype == np.float64
    assert dst.bn.num_batches_tracked.dtype == np.int64


# ------------------------------------------------------------------ container positions
# A model of every container as a plain Python list of tags: each operation is applied to
# the list, to minicbam's container and (where torch is importable) to torch's, and the
# three must agree after every step, with keys always "0".."n-1".

try:
    import torch
except ImportError:  # the minicbam half of each test still runs
    torch = None

from hypothesis import given, settings
from hypothesis import strategies as st


class Tag(nn.Module):
    """A child that appends its tag to ``trace`` when called (to see the forward order)."""

    def __init__(self, tag, trace=None):
        super().__init__()
        self.tag, self.trace = tag, trace

    def forward(self, x):
        self.trace.append(self.tag)
        return x


def _torch_tag(tag):
    m = torch.nn.Identity()
    m.tag = tag
    return m


_OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(-5, 5)),
    st.tuples(st.just("del"), st.integers(-5, 5)),
    st.tuples(
        st.just("delslice"), st.integers(-5, 5), st.integers(-5, 5), st.sampled_from([1, 2, -1])
    ),
    st.tuples(st.just("insert"), st.integers(-4, 4)),
    st.tuples(st.just("append")),
    st.tuples(st.just("extend"), st.integers(0, 2)),
    st.tuples(st.just("pop"), st.integers(-4, 4)),
)


def _apply(op, container, model, make, fresh):
    """Apply ``op`` to ``container`` and to the list ``model``; "IndexError" if both raise."""
    kind = op[0]
    if kind in ("set", "del", "pop"):
        i = op[1]
        if not -len(model) <= i < len(model):
            with pytest.raises(IndexError):
                {"set": lambda: container.__setitem__(i, make(fresh)),
                 "del": lambda: container.__delitem__(i),
                 "pop": lambda: container.pop(i)}[kind]()  # fmt: skip
            return
        if kind == "set":
            container[i] = make(fresh)
            model[i] = fresh
        elif kind == "del":
            del container[i]
            del model[i]
        else:
            assert container.pop(i).tag == model.pop(i)
    elif kind == "delslice":
        doomed = slice(*op[1:])
        del container[doomed]
        del model[doomed]
    elif kind == "insert":
        n, i = len(model), op[1]
        if type(container).__name__ == "Sequential" and not -n <= i <= n:
            with pytest.raises(IndexError):
                container.insert(i, make(fresh))
            return
        container.insert(i, make(fresh))
        model.insert(i, fresh)
    elif kind == "append":
        container.append(make(fresh))
        model.append(fresh)
    else:
        new = [fresh + k / 10 for k in range(op[1])]
        container.extend([make(t) for t in new])
        model.extend(new)


@pytest.mark.parametrize("kind", ["Sequential", "ModuleList"])
@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 4), ops=st.lists(_OPS, max_size=8))
def test_containers_keep_positions_and_renumber(kind, start, ops):
    trace = []
    make = lambda tag: Tag(tag, trace)
    model = list(range(start))
    container = (
        getattr(nn, kind)(*[make(t) for t in model])
        if kind == "Sequential"
        else (nn.ModuleList([make(t) for t in model]))
    )
    mirror = None
    if torch is not None:
        tmodel = [_torch_tag(t) for t in model]
        mirror = (
            getattr(torch.nn, kind)(*tmodel)
            if kind == "Sequential"
            else (torch.nn.ModuleList(tmodel))
        )
    for step, op in enumerate(ops):
        fresh = 100 + step
        _apply(op, container, model, make, fresh)
        # torch's ModuleList.insert raises KeyError for a negative index and leaves a gap
        # for one past the end; minicbam follows list.insert (see nn/container.py).
        torch_differs = (
            kind == "ModuleList" and op[0] == "insert" and not 0 <= op[1] <= len(mirror or [])
        )
        if mirror is not None and not torch_differs:
            _apply(op, mirror, [m.tag for m in mirror], _torch_tag, fresh)
            assert [m.tag for m in mirror] == model
            assert list(mirror._modules) == [str(i) for i in range(len(model))]
        elif mirror is not None:
            mirror = None  # the two diverge from here on
        assert [m.tag for m in container] == model
        assert list(container._modules) == [str(i) for i in range(len(model))]
        assert [container[i].tag for i in range(-len(model), len(model))] == model * 2
    if kind == "Sequential":
        container(mc.zeros(1))
        assert trace == model  # the forward runs in the positions' order


def test_sequential_setitem_replaces_in_place_as_torch():
    s = nn.Sequential(nn.ReLU(), nn.Linear(1, 1))
    s[0] = nn.Tanh()
    assert [type(m).__name__ for m in s] == ["Tanh", "Linear"]
    assert list(s.state_dict()) == ["1.weight", "1.bias"]
    del s[0]
    s.append(nn.ReLU())  # used to land on key "1" and overwrite the Linear
    assert [type(m).__name__ for m in s] == ["Linear", "ReLU"]
    if torch is not None:
        t = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(1, 1))
        t[0] = torch.nn.Tanh()
        del t[0]
        t.append(torch.nn.ReLU())
        assert [type(m).__name__ for m in t] == ["Linear", "ReLU"]


def test_reassigning_a_parameter_or_child_keeps_its_place():
    lin = nn.Linear(2, 3)
    lin.weight = nn.Parameter(mc.zeros(3, 2))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    net = Net()
    net.conv = nn.Conv2d(3, 4, 3, bias=False)
    net.bn.register_buffer("running_mean", mc.ones(4))
    net.blocks[0].register_parameter("scale", nn.Parameter(mc.ones(2)))
    assert [n for n, _ in net.named_children()] == ["conv", "bn", "blocks", "head"]
    assert list(net.state_dict())[:4] == [
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean"
    ]  # fmt: skip
    assert list(net.blocks[0].state_dict()) == ["scale", "shift", "count"]
    if torch is not None:
        t = torch.nn.Linear(2, 3)
        t.weight = torch.nn.Parameter(torch.zeros(3, 2))
        assert [n for n, _ in t.named_parameters()] == ["weight", "bias"]


def _both(fn_mc, fn_torch, exc):
    with pytest.raises(exc):
        fn_mc()
    if torch is not None:
        with pytest.raises(exc):
            fn_torch()


def test_container_argument_errors_as_torch():
    s, ml = nn.Sequential(nn.ReLU()), nn.ModuleList([nn.ReLU()])
    ts = torch.nn.Sequential(torch.nn.ReLU()) if torch else None
    tml = torch.nn.ModuleList([torch.nn.ReLU()]) if torch else None
    _both(lambda: s[0.0], lambda: ts[0.0], TypeError)
    _both(lambda: ml[0.0], lambda: tml[0.0], TypeError)
    _both(lambda: ml.__setitem__(0, 3), lambda: tml.__setitem__(0, 3), TypeError)
    _both(lambda: s.__setitem__(0, 3), lambda: ts.__setitem__(0, 3), TypeError)
    _both(lambda: nn.ModuleList([3]), lambda: torch.nn.ModuleList([3]), TypeError)
    _both(lambda: ml.extend(3), lambda: tml.extend(3), TypeError)
    _both(lambda: ml.append("x"), lambda: tml.append("x"), TypeError)
    _both(lambda: s + [nn.ReLU()], lambda: ts + [torch.nn.ReLU()], ValueError)
    _both(lambda: ml[3], lambda: tml[3], IndexError)
    with pytest.raises(TypeError):
        s.insert(0, 3)  # torch: AssertionError
    assert [type(m).__name__ for m in s] == ["ReLU"] and len(ml) == 1


def test_container_concatenation_and_repetition():
    a, b = nn.ReLU(), nn.Tanh()
    s = nn.Sequential(a) + nn.Sequential(b)
    assert list(s) == [a, b] and list(s._modules) == ["0", "1"]
    s += nn.Sequential(a)
    assert list(s) == [a, b, a]
    assert list(nn.Sequential(a, b) * 2) == [a, b, a, b] == list(2 * nn.Sequential(a, b))
    ml = nn.ModuleList([a]) + nn.ModuleList([b])
    assert list(ml) == [a, b] and list(ml._modules) == ["0", "1"]
    ml += [a]
    assert list(ml) == [a, b, a]
    assert list(ml[::-1]) == [a, b, a] and list(ml[1:]._modules) == ["0", "1"]
    ml.extend(ml)
    assert len(ml) == 6


# ------------------------------------------------------------------ all-or-nothing loading
def _corrupt(kind, value):
    if kind == "string":
        return np.full(value.shape, "x")
    if kind == "object":
        return np.empty(value.shape, dtype=object)
    if kind == "list":
        return value.tolist()
    if kind == "complex":
        return value.astype(np.complex64)
    if kind == "shape":
        return np.zeros(value.shape + (1,), value.dtype)
    return "not an array"


@settings(max_examples=40, deadline=None)
@given(
    position=st.integers(0, 100),
    kind=st.sampled_from(["string", "object", "list", "complex", "shape", "str"]),
)
def test_load_state_dict_is_all_or_nothing_and_names_the_key(position, kind):
    net = Net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    state = {k: v + 1 for k, v in before.items()}
    bad_key = list(state)[position % len(state)]
    state[bad_key] = _corrupt(kind, state[bad_key])
    with pytest.raises(RuntimeError, match=re.escape(bad_key)):
        net.load_state_dict(state)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)  # nothing was copied
    state[bad_key] = before[bad_key] + 1
    net.load_state_dict(state)  # the same dict, repaired, loads
    assert all(np.array_equal(v, before[k] + 1) for k, v in net.state_dict().items())


def test_torch_also_names_the_key_of_a_non_tensor_value():
    m = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match='"weight".*str'):
        m.load_state_dict({"weight": "x", "bias": np.zeros(2)})
    if torch is not None:
        with pytest.raises(RuntimeError, match='"weight".*str'):
            torch.nn.Linear(2, 2).load_state_dict({"weight": "x", "bias": torch.zeros(2)})


def test_pop_defaults_to_the_last_child_as_list():
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
    for kind in (nn.Sequential(a, b, c), nn.ModuleList([a, b, c])):
        assert kind.pop() is c  # list.pop() semantics: the last one
        assert list(kind) == [a, b] and list(kind._modules) == ["0", "1"]


def test_a_parameter_tied_between_two_modules_is_listed_once():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # weight tying: two modules, one Parameter
    seq = nn.Sequential(a, b)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    assert seq.num_parameters() == 9 + 3 + 3
    names = [n for n, _ in seq.named_parameters(remove_duplicate=False)]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    if torch is not None:
        ta, tb = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        tb.weight = ta.weight
        assert [n for n, _ in torch.nn.Sequential(ta, tb).named_parameters()] == names[:2] + [
            "1.bias"
        ]
