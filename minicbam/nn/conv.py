"""``Conv2d``: a 2-D convolution layer over ``(N, C, H, W)`` inputs (``F.conv2d``).

weight: ``(out_channels, in_channels // groups, KH, KW)``; bias: ``(out_channels,)``.
Default initialisation as in PyTorch: ``kaiming_uniform_(weight, a=sqrt(5))``, i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias from the same range.
"""

import math

from minicbam.nn import functional as F
from minicbam.nn import init
from minicbam.nn._utils import (
    check_non_negative,
    check_positive,
    layer_dtype,
    new_parameter,
    pair,
)
from minicbam.nn.module import Module


class Conv2d(Module):
    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dtype = layer_dtype(type(self).__name__, dtype)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        # As in PyTorch, ``padding`` keeps a string ("same", "valid") as given.
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.padding_mode = padding_mode
        self._check()
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = new_parameter(shape, device, dtype)
        if bias:
            self.bias = new_parameter((out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _check(self):
        name = "Conv2d"
        check_positive(
            name,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
        )
        self._check_padding(name)
        if self.in_channels % self.groups:
            raise ValueError(
                f"{name}: in_channels ({self.in_channels}) must be divisible by "
                f"groups ({self.groups})"
            )
        if self.out_channels % self.groups:
            raise ValueError(
                f"{name}: out_channels ({self.out_channels}) must be divisible by "
                f"groups ({self.groups})"
            )
        if self.padding_mode != "zeros":
            raise NotImplementedError(
                f"{name}: only padding_mode='zeros' is supported, got {self.padding_mode!r}"
            )

    def _check_padding(self, name):
        if isinstance(self.padding, str):
            if self.padding not in ("same", "valid"):
                raise ValueError(
                    f"{name}: padding must be 'same', 'valid' or ints, got {self.padding!r}"
                )
            if self.padding == "same" and self.stride != (1, 1):
                raise ValueError(
                    f"{name}: padding='same' is not supported for strided convolutions"
                )
            return  # F.conv2d turns the string into pixels (uneven for even kernels)
        check_non_negative(name, padding=self.padding)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self):
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * len(self.padding):  # also prints "same" and "valid"
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
