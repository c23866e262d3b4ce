"""Learning-rate schedules: closed forms, lr sequences against torch.optim.lr_scheduler,
state round trips and argument checks."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam import optim
from minicbam.io.serialization import load, save
from minicbam.optim import lr_scheduler

EPOCHS = 25


def make_optimizer(lrs=(0.1, 0.02)):
    groups = [{"params": [mc.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return optim.SGD(groups, lr=lrs[0], momentum=0.9)


def lr_sequence(scheduler, epochs=EPOCHS):
    """get_last_lr() after construction and after each of ``epochs`` steps, with the lrs the
    optimizer's groups actually hold checked to match."""
    out = []
    for _ in range(epochs + 1):
        lrs = scheduler.get_last_lr()
        assert lrs == [g["lr"] for g in scheduler.optimizer.param_groups]
        out.append(lrs)
        scheduler.optimizer.step()
        scheduler.step()
    return np.array(out)


def torch_sequence(torch, build, lrs=(0.1, 0.02), epochs=EPOCHS):
    params = [torch.zeros(2, requires_grad=True) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    opt = torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    scheduler = build(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(epochs + 1):
        out.append(scheduler.get_last_lr())
        opt.step()
        scheduler.step()
    return np.array(out)


# ----------------------------------------------------------------------------- closed forms
def test_step_lr_closed_form():
    scheduler = lr_scheduler.StepLR(make_optimizer(), step_size=3, gamma=0.5)
    assert scheduler.last_epoch == 0
    got = lr_sequence(scheduler, 9)
    want = [[0.1 * 0.5 ** (e // 3), 0.02 * 0.5 ** (e // 3)] for e in range(10)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert scheduler.last_epoch == 10


def test_cosine_closed_form_reaches_eta_min_at_t_max():
    scheduler = lr_scheduler.CosineAnnealingLR(make_optimizer(), T_max=8, eta_min=1e-3)
    got = lr_sequence(scheduler, 8)[:, 0]
    want = [1e-3 + (0.1 - 1e-3) * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert got[0] == 0.1 and math.isclose(got[-1], 1e-3)


def test_linear_warmup_then_cosine():
    opt = make_optimizer((1.0,))
    warmup = lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    scheduler = lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])
    got = lr_sequence(scheduler, 7)[:, 0]
    want = [0.25, 0.5, 0.75] + [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-17)


@given(milestones=st.lists(st.integers(1, 4), min_size=1, max_size=2, unique=True))
def test_sequential_switches_at_each_milestone(milestones):
    # schedules that disagree where they meet: the lr at epoch m_i is the next schedule's
    # epoch 0 (and the warm-up + cosine pair above agrees there by construction)
    milestones = sorted(milestones)
    opt = make_optimizer((1.0,))
    parts = [lr_scheduler.StepLR(opt, step_size=1, gamma=0.3)]
    parts += [lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=3) for _ in milestones]
    scheduler = lr_scheduler.SequentialLR(opt, parts, milestones=milestones)
    got = lr_sequence(scheduler, 8)[:, 0]
    starts = [0] + milestones
    want = []
    for e in range(9):
        i = sum(m <= e for m in milestones)
        k = e - starts[i]
        want.append(0.3**k if i == 0 else 0.2 + 0.8 * min(k, 3) / 3)
    np.testing.assert_allclose(got, want, rtol=1e-15)


# ----------------------------------------------------------------------------- vs torch
@given(step_size=st.integers(1, 6), gamma=st.floats(0.05, 1.0))
def test_step_lr_matches_torch(step_size, gamma):
    torch = pytest.importorskip("torch")
    got = lr_sequence(lr_scheduler.StepLR(make_optimizer(), step_size, gamma))
    want = torch_sequence(torch, lambda s, o: s.StepLR(o, step_size, gamma))
    np.testing.assert_allclose(got, want, rtol=1e-12)


@given(t_max=st.integers(1, 12), eta_min=st.sampled_from([0.0, 1e-4, 0.01]))
def test_cosine_matches_torch(t_max, eta_min):
    torch = pytest.importorskip("torch")
    got = lr_sequence(lr_scheduler.CosineAnnealingLR(make_optimizer(), t_max, eta_min))
    want = torch_sequence(torch, lambda s, o: s.CosineAnnealingLR(o, t_max, eta_min))
    # torch updates the lr multiplicatively each epoch, so rounding accumulates there
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


@given(start=st.floats(0.01, 1.0), end=st.floats(0.0, 1.0), total=st.integers(1, 8))
def test_linear_matches_torch(start, end, total):
    torch = pytest.importorskip("torch")
    got = lr_sequence(lr_scheduler.LinearLR(make_optimizer(), start, end, total))
    want = torch_sequence(torch, lambda s, o: s.LinearLR(o, start, end, total))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


@given(warmup=st.integers(1, 5), t_max=st.integers(1, 10))
def test_warmup_cosine_sequence_matches_torch(warmup, t_max):
    torch = pytest.importorskip("torch")

    def build(s, o):
        first = s.LinearLR(o, start_factor=0.1, total_iters=warmup)
        return s.SequentialLR(o, [first, s.CosineAnnealingLR(o, t_max)], milestones=[warmup])

    ours = build(lr_scheduler, make_optimizer())
    np.testing.assert_allclose(
        lr_sequence(ours), torch_sequence(torch, build), rtol=1e-9, atol=1e-15
    )


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize(
    "build",
    [
        lambda o: lr_scheduler.StepLR(o, 2, 0.5),
        lambda o: lr_scheduler.CosineAnnealingLR(o, 6, 1e-3),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.LinearLR(o, 0.1, total_iters=2), lr_scheduler.CosineAnnealingLR(o, 5)],
            milestones=[2],
        ),
    ],
)
def test_state_dict_round_trip(build, tmp_path):
    opt = make_optimizer()
    scheduler = build(opt)
    for _ in range(3):
        scheduler.step()
    path = tmp_path / "sched.safetensors"
    save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, str(path))
    saved = load(str(path))

    fresh_opt = make_optimizer()
    fresh = build(fresh_opt)
    fresh_opt.load_state_dict(saved["optimizer"])
    fresh.load_state_dict(saved["scheduler"])
    assert fresh.last_epoch == 3 and fresh.get_last_lr() == scheduler.get_last_lr()
    np.testing.assert_array_equal(lr_sequence(fresh, 4), lr_sequence(scheduler, 4))


def test_load_state_dict_refuses_a_state_with_missing_entries():
    scheduler = lr_scheduler.StepLR(make_optimizer(), 2, 0.5)
    state = scheduler.state_dict()
    del state["gamma"]
    with pytest.raises(ValueError, match=r"missing: \['gamma'\]"):
        scheduler.load_state_dict(state)
    assert scheduler.gamma == 0.5


def test_resuming_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(make_optimizer(), 2, last_epoch=4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda o: lr_scheduler.StepLR(o, 0), "step_size must be a positive integer"),
        (lambda o: lr_scheduler.CosineAnnealingLR(o, 0), "T_max must be positive"),
        (lambda o: lr_scheduler.LinearLR(o, start_factor=0), "start_factor"),
        (lambda o: lr_scheduler.LinearLR(o, end_factor=1.5), "end_factor"),
        (
            lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.StepLR(o, 1)], [2]),
            "expected 0 milestones",
        ),
        (
            lambda o: lr_scheduler.SequentialLR(
                o,
                [lr_scheduler.StepLR(o, 1), lr_scheduler.StepLR(o, 1), lr_scheduler.StepLR(o, 1)],
                [3, 2],
            ),
            "positive and increasing",
        ),
        (
            lambda o: lr_scheduler.SequentialLR(
                o, [lr_scheduler.StepLR(make_optimizer(), 1), lr_scheduler.StepLR(o, 1)], [2]
            ),
            "same optimizer",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_optimizer())


def test_scheduler_needs_an_optimizer():
    with pytest.raises(TypeError, match="not an Optimizer"):
        lr_scheduler.StepLR([mc.zeros(1)], 1)
