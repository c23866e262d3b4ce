"""The engine hooks DistributedDataParallel stands on: a leaf's post-accumulate-grad hook runs
once per backward, after its last gradient has been added (so .grad is final), and never for
a leaf the backward did not reach; queue_callback runs once after the sweep."""

import numpy as np
import pytest

import minicbam as mc
from minicbam.function import queue_callback


def test_hook_sees_the_final_gradient_once():
    w = mc.tensor(np.array([1.0, 2.0]), dtype=mc.float64, requires_grad=True)
    unused = mc.tensor(np.array([1.0]), dtype=mc.float64, requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    unused.register_post_accumulate_grad_hook(lambda t: seen.append("unused"))
    # w reaches the loss along three edges (w * w counts twice): the hook waits for all
    loss = (w * w).sum() + (w * 3.0).sum()
    loss.backward()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], 2 * np.array([1.0, 2.0]) + 3.0)
    loss2 = (w * 2.0).sum()
    loss2.backward()  # accumulates: the hook sees the sum of both backward passes
    np.testing.assert_array_equal(seen[1], 2 * np.array([1.0, 2.0]) + 5.0)


def test_hook_fires_before_the_rest_of_backward():
    # a (the later layer) is final before b's gradient is computed
    a = mc.tensor(np.array([2.0]), dtype=mc.float64, requires_grad=True)
    b = mc.tensor(np.array([3.0]), dtype=mc.float64, requires_grad=True)
    order = []
    a.register_post_accumulate_grad_hook(lambda t: order.append(("a", b.grad is None)))
    b.register_post_accumulate_grad_hook(lambda t: order.append(("b", a.grad is None)))
    ((b.exp() * 1.0).exp() * a).sum().backward()
    assert order == [("a", True), ("b", False)]


def test_callback_runs_once_after_the_sweep():
    w = mc.tensor(np.array([1.0]), dtype=mc.float64, requires_grad=True)
    events = []

    def hook(t):
        events.append("hook")
        queue_callback(lambda: events.append("done"))

    w.register_post_accumulate_grad_hook(hook)
    (w * 2.0).sum().backward()
    assert events == ["hook", "done"]
    w.grad = None
    w.backward(mc.tensor(np.array([1.0]), dtype=mc.float64))  # a leaf's own backward too
    assert events == ["hook", "done", "hook", "done"]


def test_failed_sweep_drops_its_callbacks():
    w = mc.tensor(np.array([1.0]), dtype=mc.float64, requires_grad=True)
    events = []
    y = (w * 2.0).sum()
    queue_callback(lambda: events.append("stale"))
    y.backward()
    assert events == ["stale"]
    z = (w * 2.0).sum()
    z.backward()
    with pytest.raises(RuntimeError, match="second time"):
        queue_callback(lambda: events.append("never"))
        z.backward()
    (w * 2.0).sum().backward()
    assert events == ["stale"]


def test_only_leaves_take_hooks():
    w = mc.tensor(np.array([1.0]), dtype=mc.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        (w * 2.0).register_post_accumulate_grad_hook(print)
