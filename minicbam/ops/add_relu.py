"""Residual sum and ReLU as one op: y = relu(a + b), a and b of one shape and dtype (a
ResNet block's branch and shortcut).

    forward:   y = relu(a + b)                   (one pass; a + b is never stored)
    backward:  ga = gb = gy [not y <= 0]         (relu'(0) = 0; a NaN sum is NaN in y and
                                                  passes gy, as PyTorch's threshold_backward)

The mask is read from the saved output: y > 0 exactly where a + b > 0. The gradient is one
array handed to both inputs, as ``add``'s backward hands gy to both (the backward sweep
copies before it sums into such an array).

Internal: the ResNet blocks call it for ``relu(out + shortcut)``; the sum is not exposed.
Both devices run the same scalar bodies (elementwise.binary_kernel); backward is ReLU's own
gradient kernel applied to the output.
"""

from numba.extending import register_jitable

from minicbam.function import Function
from minicbam.kernels.elementwise import apply_binary, binary_kernel
from minicbam.ops.unary import relu_grad_kernel


@register_jitable
def _add_relu(a, b, zero, one):
    s = a + b
    return zero if s <= zero else s  # noqa: FURB136 (a comparison: relu(NaN) is NaN)


add_relu_kernel = binary_kernel(_add_relu)


class AddReLU(Function):
    def forward(self, a, b):
        self.y = apply_binary(add_relu_kernel, a, b, 0.0, 1.0)
        return self.y

    def backward(self, gy):
        g = apply_binary(relu_grad_kernel, gy, self.y, 0.0, 1.0)
        return g, g


def add_relu(a, b):
    """``relu(a + b)`` for tensors of one shape and dtype (internal)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
            f"add_relu: expected two tensors of one shape and dtype, got {tuple(a.shape)} "
            f"{a.dtype} and {tuple(b.shape)} {b.dtype}"
        )
    return AddReLU()(a, b)
