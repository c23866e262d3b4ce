"""``BatchNorm2d`` and ``BatchNorm1d``: normalise each channel by batch statistics.

    y = (x - mean) / sqrt(var + eps) * weight + bias

Training uses the batch's statistics and updates the running ones in place (inside
``F.batch_norm``): ``running = (1 - f) * running + f * batch`` with the unbiased batch
variance, where ``f = momentum``, or ``1 / num_batches_tracked`` (a cumulative average)
when ``momentum=None``. Evaluation uses the running statistics. State-dict keys and
defaults are PyTorch's: ``weight`` 1, ``bias`` 0, ``running_mean`` 0, ``running_var`` 1,
``num_batches_tracked`` 0 (an int64 scalar counting training forwards).
"""

import numpy as np

from minicbam import device
from minicbam.nn import functional as F
from minicbam.nn import init
from minicbam.nn._utils import check_positive, layer_dtype, new_parameter
from minicbam.nn.module import Module
from minicbam.ops.batch_norm_relu import batch_norm_relu
from minicbam.ops.binary import SCALAR_KERNELS
from minicbam.tensor import float32, int64, ones, tensor, zeros


def _increment(counter):
    """``counter += 1`` in place, by a kernel on the counter's device: no Python scalar is
    lifted to the device and nothing is read back."""
    data = device.flat(counter.data)
    SCALAR_KERNELS["add"](data, data, data.dtype.type(1), data.dtype.type(0))


class _BatchNorm(Module):
    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        device=None,
        dtype=None,
        *,
        bias=True,
    ):
        super().__init__()
        check_positive(type(self).__name__, num_features=num_features)
        dtype = layer_dtype(type(self).__name__, dtype)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum}"
            )
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self._make_affine(affine, bias, device, dtype)
        self._make_running_stats(track_running_stats, device or "cpu", dtype or float32)
        self.reset_parameters()

    def _make_affine(self, affine, bias, device, dtype):
        C = self.num_features
        self.register_parameter("weight", new_parameter((C,), device, dtype) if affine else None)
        with_bias = affine and bias  # torch >= 2.6: ``bias=False`` keeps only the scale
        self.register_parameter("bias", new_parameter((C,), device, dtype) if with_bias else None)

    def _make_running_stats(self, track, device, dtype):
        C = self.num_features
        mean = zeros(C, dtype=dtype, device=device) if track else None
        var = ones(C, dtype=dtype, device=device) if track else None
        count = tensor(np.array(0, dtype=int64), device=device) if track else None
        self.register_buffer("running_mean", mean)
        self.register_buffer("running_var", var)
        self.register_buffer("num_batches_tracked", count)

    def reset_running_stats(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            init.zeros_(self.num_batches_tracked)

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input):
        raise NotImplementedError

    def _check_channels(self, input):
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}): expected input with "
                f"{self.num_features} channels, got shape {input.shape}"
            )

    def _average_factor(self):
        """The running-stat update factor of this forward; counts the batch when training."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        counter = self.num_batches_tracked
        _increment(counter)
        if self.momentum is None:  # reads the count back (a synchronisation), as PyTorch does
            return 1.0 / float(counter.item())
        return self.momentum

    def _normalize(self, x, op=F.batch_norm):
        factor = self._average_factor()
        # Batch statistics when training, or when there are no running ones to use.
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return op(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def forward(self, input):
        self._check_input_dim(input)
        self._check_channels(input)
        return self._normalize(input)

    def forward_relu(self, input):
        """``relu(self(input))`` as one fused op (ops/batch_norm_relu.py): the same running
        statistics, counter and modes; the pre-activation is not materialised."""
        self._check_input_dim(input)
        self._check_channels(input)
        return self._normalize(input, batch_norm_relu)

    def extra_repr(self):
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)``: statistics per channel over N, H and W."""

    def _check_input_dim(self, input):
        if input.ndim != 4:
            raise ValueError(f"BatchNorm2d: expected 4D input (got {input.ndim}D input)")


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)``, run as ``(N, C, L, 1)`` by BatchNorm2d's op."""

    def _check_input_dim(self, input):
        if input.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d: expected 2D or 3D input (got {input.ndim}D input)")

    def forward(self, input):
        self._check_input_dim(input)
        self._check_channels(input)
        shape = input.shape
        x = input.reshape(shape[0], shape[1], shape[2] if input.ndim == 3 else 1, 1)
        return self._normalize(x).reshape(*shape)
