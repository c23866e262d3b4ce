"""``Linear``: y = x W^T + b over the last dimension (``F.linear``); ``Identity``.

weight: ``(out_features, in_features)``; bias: ``(out_features,)``. Initialised as in
PyTorch: ``kaiming_uniform_(weight, a=sqrt(5))`` and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
"""

import math

from minicbam.nn import functional as F
from minicbam.nn import init
from minicbam.nn._utils import check_non_negative, layer_dtype, new_parameter
from minicbam.nn.module import Module


class Identity(Module):
    """Returns its input; accepts and ignores any constructor arguments (as PyTorch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        check_non_negative("Linear", in_features=in_features, out_features=out_features)
        dtype = layer_dtype("Linear", dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = new_parameter((out_features, in_features), device, dtype)
        if bias:
            self.bias = new_parameter((out_features,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
