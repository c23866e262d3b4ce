"""Pooling layers over ``(N, C, H, W)``: ``MaxPool2d``, ``AvgPool2d`` and their adaptive forms.

As in PyTorch, ``stride=None`` means ``stride = kernel_size``; the attributes keep the
values the user gave (ints stay ints) so that ``repr`` reads the same as PyTorch's.
"""

from minicbam.nn import functional as F
from minicbam.nn._utils import check_non_negative, check_positive, pair
from minicbam.nn.module import Module


def _check_window(layer, kernel_size, stride, padding, dilation=1):
    kernel, pad = pair(kernel_size, "kernel_size"), pair(padding, "padding")
    check_positive(
        layer,
        kernel_size=kernel,
        stride=pair(stride, "stride"),
        dilation=pair(dilation, "dilation"),
    )
    check_non_negative(layer, padding=pad)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(
            f"{layer}: padding should be at most half of the kernel size, "
            f"got padding={padding}, kernel_size={kernel_size}"
        )


class MaxPool2d(Module):
    def __init__(
        self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode
        _check_window("MaxPool2d", kernel_size, self.stride, padding, dilation)

    def forward(self, input):
        return F.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        _check_window("AvgPool2d", kernel_size, self.stride, padding)
        if divisor_override is not None and divisor_override <= 0:
            raise ValueError(
                f"AvgPool2d: divisor_override must be positive, got {divisor_override}"
            )

    def forward(self, input):
        return F.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _check_output_size(layer, output_size):
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    if any(s is not None and int(s) <= 0 for s in sizes):
        raise ValueError(f"{layer}: output_size must be positive, got {output_size!r}")


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        _check_output_size("AdaptiveAvgPool2d", output_size)
        self.output_size = output_size

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    def __init__(self, output_size, return_indices=False):
        super().__init__()
        _check_output_size("AdaptiveMaxPool2d", output_size)
        if return_indices:
            raise NotImplementedError("AdaptiveMaxPool2d: return_indices=True is not supported")
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, input):
        return F.adaptive_max_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
