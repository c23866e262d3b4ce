"""minicbam.gradcheck itself: it passes correct gradients and reports wrong ones precisely."""

import re

import numpy as np
import pytest

import minicbam as mc
from minicbam.function import Function


class Square(Function):
    """y = x^2 with a gradient that is right except, optionally, at one element."""

    def __init__(self, wrong_at=None, drop_gradient=False):
        self.wrong_at, self.drop_gradient = wrong_at, drop_gradient

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        if self.drop_gradient:
            return (None,)
        gx = 2 * self.x * gy
        if self.wrong_at is not None:
            gx[self.wrong_at] += 1.0  # the deliberate bug
        return (gx,)


class ScaledProduct(Function):
    """y = a * b with b's gradient off by a factor 3/2 (a's is right)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        return gy * self.b, 1.5 * gy * self.a


def _leaf(shape, seed, requires_grad=True):
    x = np.random.default_rng(seed).uniform(0.5, 2.0, shape)
    return mc.tensor(x, dtype=mc.float64, requires_grad=requires_grad)


def test_passes_on_correct_functions():
    a, b = _leaf((2, 3), 0), _leaf((3,), 1)
    assert mc.gradcheck(lambda x, y: (x * y).exp().sum(1) / (y * y + 1).sum(), (a, b))
    assert mc.gradcheck(lambda x: Square()(x), _leaf((4,), 2))
    assert mc.gradcheck(lambda x: (x.tanh(), x.sigmoid() * 2), _leaf((2, 2), 3))  # tuple output


def test_fails_naming_input_element_and_values():
    x = _leaf((2, 3), 4)
    with pytest.raises(mc.GradcheckError) as info:
        mc.gradcheck(lambda t: Square(wrong_at=(1, 2))(t), x)
    message = str(info.value)
    assert "input 0 (shape (2, 3))" in message
    assert "1 of 6 elements disagree" in message
    assert "worst at index (1, 2)" in message
    numeric, analytic = map(float, re.search(r"numeric (\S+) vs analytic (\S+)", message).groups())
    # backward returns J^T v + 1 at (1, 2), whatever the random cotangent v
    assert analytic == pytest.approx(numeric + 1.0, abs=1e-4)


def test_names_the_wrong_input_among_several():
    a, b = _leaf((3,), 5), _leaf((3,), 6)
    assert not mc.gradcheck(lambda x, y: ScaledProduct()(x, y), (a, b), raise_exception=False)
    report = mc.gradcheck.last_report
    assert "input 1 (shape (3,))" in report and "input 0" not in report


def test_missing_gradient_is_reported():
    with pytest.raises(mc.GradcheckError, match=r"input 0 .*analytic 0 "):
        mc.gradcheck(lambda t: Square(drop_gradient=True)(t), _leaf((2,), 7))


def test_inputs_without_requires_grad_are_skipped():
    a, b = _leaf((3,), 8, requires_grad=False), _leaf((3,), 9)
    assert mc.gradcheck(lambda x, y: ScaledProduct()(y, x), (a, b))  # only y's grad is checked


def test_argument_errors():
    with pytest.raises(ValueError, match="no input tensor has requires_grad=True"):
        mc.gradcheck(lambda t: t * 2, _leaf((2,), 10, requires_grad=False))
    x32 = mc.tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"input 0 has dtype float32.*float64"):
        mc.gradcheck(lambda t: t * 2, x32)


def test_a_gradient_the_inputs_already_hold_is_not_counted():
    x = _leaf((2, 3), 12)
    (x * 3.0).sum().backward()  # a stale .grad from an earlier step
    assert mc.gradcheck(lambda t: t * t, x)


def test_leaves_inputs_unchanged():
    x = _leaf((2, 2), 11)
    before = x.numpy()
    mc.gradcheck(lambda t: t * t, x)
    np.testing.assert_array_equal(x.numpy(), before)


class Offset(Function):
    """y = x^2 whose gradient at element 0 is off by ``offset`` (NaN allowed)."""

    def __init__(self, offset):
        self.offset = offset

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        gx = 2 * self.x * gy
        gx[0] += self.offset
        return (gx,)


class Reversed(Function):
    """y = x whose backward routes each output's gradient to the mirrored input: right
    for a cotangent of equal entries, wrong for any other."""

    def forward(self, x):
        return x.copy()

    def backward(self, gy):
        return (gy[::-1].copy(),)


@pytest.mark.parametrize("scale", [1e-3, 1e3])
def test_tolerance_is_atol_plus_rtol_times_numeric(scale):
    # element 0's numeric gradient is 2 x0 v0 (v: the seeded cotangent); an error just
    # over atol + rtol |numeric| is reported, one just under it is not
    x = mc.tensor(np.array([scale, 1.0, 2.0]), dtype=mc.float64, requires_grad=True)
    v0 = np.random.default_rng(5).standard_normal(3)[0]
    tolerance = 1e-5 + 1e-3 * abs(2 * scale * v0)
    for factor, passes in ((0.5, True), (2.0, False)):
        fn = lambda t: Offset(factor * tolerance)(t)  # noqa: B023 - called right away
        assert mc.gradcheck(fn, x, seed=5, raise_exception=False) == passes, factor


def test_nan_gradient_is_reported():
    x = _leaf((3,), 12)
    with pytest.raises(mc.GradcheckError, match="analytic nan"):
        mc.gradcheck(lambda t: Offset(np.nan)(t), x)


def test_gradient_sent_to_the_wrong_output_is_caught():
    # a cotangent of ones could not tell gy from gy reversed
    assert not mc.gradcheck(lambda t: Reversed()(t), _leaf((4,), 13), raise_exception=False)
