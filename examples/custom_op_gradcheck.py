"""Write your own differentiable op and verify its backward with ``mc.gradcheck``.

A minicbam op is a ``Function`` subclass: ``forward`` gets the input arrays (NumPy arrays on
the CPU) and returns the output array; ``backward`` gets the gradient of the loss with respect
to that output, ``gy``, and returns one gradient per input. Here: softplus,

    y = log(1 + e^x)            dy/dx = 1 / (1 + e^-x) = sigmoid(x)     so  gx = gy * sigmoid(x)

``mc.gradcheck`` compares that backward with central finite differences in float64. The
second op below forgets the chain rule (it returns sigmoid(x) instead of gy * sigmoid(x));
gradcheck catches it and names the input, the worst element and both values.

    python examples/custom_op_gradcheck.py
"""

import numpy as np

import minicbam as mc
from minicbam.function import Function


class Softplus(Function):
    """y = log(1 + exp(x)), elementwise (CPU only: forward and backward use NumPy)."""

    def forward(self, x):
        self.x = x  # saved for backward
        return np.logaddexp(0.0, x)  # log(e^0 + e^x), without overflow for large x

    def backward(self, gy):
        sigmoid = 1.0 / (1.0 + np.exp(-self.x))
        return (gy * sigmoid,)  # one gradient per forward input


class WrongSoftplus(Softplus):
    """The same forward; a backward that drops the incoming gradient ``gy``."""

    def backward(self, gy):
        return (1.0 / (1.0 + np.exp(-self.x)),)


def softplus(x):
    return Softplus()(x)  # a fresh Function per call: it is the node of the graph


def wrong_softplus(x):
    return WrongSoftplus()(x)


def main():
    rng = np.random.default_rng(0)
    x = mc.tensor(rng.standard_normal((3, 4)), dtype=mc.float64, requires_grad=True)

    # The op works like any built-in one: in expressions, with backward.
    loss = (softplus(x) * 2).sum()
    loss.backward()
    print("softplus(x).sum() =", round(loss.item(), 6), "; x.grad[0] =", x.grad.numpy()[0])

    print("gradcheck(softplus):", mc.gradcheck(softplus, (x,)))

    ok = mc.gradcheck(wrong_softplus, (x,), raise_exception=False)
    print("gradcheck(wrong_softplus):", ok)
    print("  report:", mc.gradcheck.last_report)
    try:
        mc.gradcheck(wrong_softplus, (x,))  # by default a failure raises
    except mc.GradcheckError:
        print("  (raised GradcheckError, as expected)")
    return 0 if not ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
