"""Optimizer state_dict/load_state_dict: 3 steps + save + fresh optimizer + load + 2 steps
equals 5 uninterrupted steps, through mc's file format too; mismatches raise clearly."""

import numpy as np
import pytest

import minicbam as mc
from minicbam import optim
from minicbam.io.serialization import load, save

SHAPES = [(3,), (2, 2)]


def grads_for(step):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s) for s in SHAPES]


def fresh_params(arrays):
    return [mc.tensor(a, dtype=mc.float64, requires_grad=True) for a in arrays]


def run(opt, params, steps):
    for step in steps:
        for p, g in zip(params, grads_for(step)):
            p.grad = mc.tensor(g, dtype=mc.float64)
        opt.step()


def two_groups(params, **kwargs):
    return [{"params": [params[0]]}, {"params": [params[1]], **kwargs}]


BUILDERS = {
    "sgd-nesterov": lambda ps: optim.SGD(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "sgd-groups": lambda ps: optim.SGD(two_groups(ps, lr=0.3, dampening=0.5), lr=0.1, momentum=0.8),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.05, betas=(0.8, 0.9), amsgrad=True),
    "adamw-groups": lambda ps: optim.AdamW(two_groups(ps, weight_decay=0.3), lr=0.05),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("through_file", [False, True])
def test_round_trip_equals_uninterrupted(name, through_file, tmp_path):
    build = BUILDERS[name]
    start = [np.linspace(-1, 1, int(np.prod(s))).reshape(s) for s in SHAPES]
    params = fresh_params(start)
    build_opt = build(params)
    run(build_opt, params, range(5))

    first = fresh_params(start)
    opt = build(first)
    run(opt, first, range(3))
    state = opt.state_dict()
    if through_file:
        save({"optim": state}, str(tmp_path / "opt.safetensors"))
        state = load(str(tmp_path / "opt.safetensors"))["optim"]
    resumed = fresh_params([p.numpy() for p in first])
    opt2 = build(resumed)
    opt2.load_state_dict(state)
    run(opt2, resumed, range(3, 5))
    for a, b in zip(resumed, params):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_dict_layout_and_copies():
    params = fresh_params([np.ones(3), np.ones((2, 2))])
    opt = optim.Adam(two_groups(params, lr=0.5), lr=0.1)
    run(opt, params, range(2))
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.1, 0.5]
    assert set(sd["state"]) == {0, 1}
    entry = sd["state"][1]
    assert int(entry["step"]) == 2
    assert isinstance(entry["exp_avg"], np.ndarray) and entry["exp_avg"].shape == (2, 2)
    entry["exp_avg"][...] = 99  # a copy: editing it must not reach the optimizer
    assert not np.any(opt.state[params[1]]["exp_avg"].numpy() == 99)


def test_load_restores_hyper_parameters():
    opt = optim.SGD(fresh_params([np.ones(3), np.ones((2, 2))]), lr=0.1, momentum=0.5)
    other = optim.SGD(fresh_params([np.ones(3), np.ones((2, 2))]), lr=0.7, momentum=0.9)
    opt.load_state_dict(other.state_dict())
    assert opt.param_groups[0]["lr"] == 0.7 and opt.param_groups[0]["momentum"] == 0.9


def test_torch_adam_state_dict_loads_and_continues():
    torch = pytest.importorskip("torch")
    start = [np.linspace(-1, 1, int(np.prod(s))).reshape(s) for s in SHAPES]
    tparams = [torch.tensor(a, requires_grad=True) for a in start]
    topt = torch.optim.Adam(tparams, lr=0.05)
    for step in range(5):
        for p, g in zip(tparams, grads_for(step)):
            p.grad = torch.tensor(g)
        topt.step()
        if step == 2:
            sd = topt.state_dict()
            tstate = {
                i: {k: v.numpy().copy() for k, v in s.items()} for i, s in sd["state"].items()
            }
            state = {"state": tstate, "param_groups": sd["param_groups"]}
            params = fresh_params([p.detach().numpy() for p in tparams])
    opt = optim.Adam(params)
    opt.load_state_dict(state)
    run(opt, params, range(3, 5))
    for a, b in zip(params, tparams):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10)


def mismatch_state():
    opt = optim.SGD(fresh_params([np.ones(3), np.ones((2, 2))]), lr=0.1, momentum=0.9)
    run(opt, opt.param_groups[0]["params"], range(1))
    return opt.state_dict()


def test_mismatched_group_count():
    opt = optim.SGD(two_groups(fresh_params([np.ones(3), np.ones((2, 2))])), lr=0.1)
    with pytest.raises(
        ValueError, match="saved state has 1 parameter groups, this optimizer has 2"
    ):
        opt.load_state_dict(mismatch_state())


def test_mismatched_param_count():
    opt = optim.SGD(fresh_params([np.ones(3)]), lr=0.1)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the saved state but 1"):
        opt.load_state_dict(mismatch_state())


def test_mismatched_state_shape():
    opt = optim.SGD(fresh_params([np.ones(3), np.ones((4,))]), lr=0.1)
    with pytest.raises(ValueError, match=r"'momentum_buffer' has shape \(2, 2\).* \(4,\)"):
        opt.load_state_dict(mismatch_state())


# --------------------------------------------------------------- all-or-nothing loading
from hypothesis import given, settings
from hypothesis import strategies as st


def _snapshot(opt):
    state = {id(p): {k: np.array(v.numpy() if hasattr(v, "numpy") else v) for k, v in s.items()}
             for p, s in opt.state.items()}  # fmt: skip
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return state, groups


def _same(a, b):
    assert a[1] == b[1]
    assert a[0].keys() == b[0].keys()
    for pid, entries in a[0].items():
        assert entries.keys() == b[0][pid].keys()
        for k in entries:
            np.testing.assert_array_equal(entries[k], b[0][pid][k])


_BREAKS = {
    "string state": lambda s: s["state"][1].__setitem__("exp_avg", np.full((2, 2), "x")),
    "shape state": lambda s: s["state"][1].__setitem__("exp_avg_sq", np.zeros(5)),
    "object step": lambda s: s["state"][1].__setitem__("step", np.empty((), dtype=object)),
    "vector step": lambda s: s["state"][0].__setitem__("step", np.zeros(3)),
    "bad lr": lambda s: s["param_groups"][0].__setitem__("lr", -1.0),
    "bad betas": lambda s: s["param_groups"][0].__setitem__("betas", (0.9,)),
    "no params": lambda s: s["param_groups"][0].pop("params"),
    "bad index": lambda s: s["state"].__setitem__("x", {}),
    "no state": lambda s: s.pop("state"),
    "groups not a list": lambda s: s.__setitem__("param_groups", 3),
}


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(sorted(_BREAKS)))
def test_optimizer_load_is_all_or_nothing(which):
    params = fresh_params([np.ones(3), np.ones((2, 2))])
    opt = optim.Adam(params, lr=0.1)
    run(opt, params, range(2))
    other_params = fresh_params([np.ones(3), np.ones((2, 2))])
    other = optim.Adam(other_params, lr=0.01, betas=(0.5, 0.6))
    run(other, other_params, range(3))
    state = other.state_dict()
    _BREAKS[which](state)
    before = _snapshot(opt)
    with pytest.raises((ValueError, TypeError), match="Adam"):
        opt.load_state_dict(state)
    _same(_snapshot(opt), before)  # nothing changed: lr, betas, moments, step counters


@pytest.mark.parametrize("part", [0, 1, "top"])
def test_scheduler_load_is_all_or_nothing(part):
    from minicbam.optim import lr_scheduler

    def build():
        opt = optim.SGD(fresh_params([np.ones(3)]), lr=0.1)
        ramp = lr_scheduler.LinearLR(opt, 0.1, total_iters=2)
        return lr_scheduler.SequentialLR(opt, [ramp, lr_scheduler.CosineAnnealingLR(opt, 5)], [2])

    saved = build()
    for _ in range(3):
        saved.step()
    state = saved.state_dict()
    if part == "top":
        state["last_epoch"] = "three"
    else:
        state["schedulers"][part]["base_lrs"] = [0.1, 0.2]  # one group, two lrs
    fresh = build()
    before = (fresh.last_epoch, [s.__dict__.copy() for s in fresh.schedulers])
    with pytest.raises(ValueError, match="load_state_dict.*(last_epoch|base_lrs)"):
        fresh.load_state_dict(state)
    assert (fresh.last_epoch, [s.__dict__ for s in fresh.schedulers]) == before
    with pytest.raises(ValueError, match=r"unexpected: \['T_max', 'eta_min'\]"):
        lr_scheduler.StepLR(optim.SGD(fresh_params([np.ones(3)]), lr=0.1), 2).load_state_dict(
            state["schedulers"][1]
        )
