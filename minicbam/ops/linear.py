"""Fully connected layer, PyTorch's ``linear``: one GEMM plus a bias add.

x (..., IN) flattened to X (R, IN), weight W (OUT, IN), bias b (OUT,):

    Y  = X W^T + b                  (R, OUT), reshaped to (..., OUT)
    gX = gY W                       (R, IN)
    gW = gY^T X                     (OUT, IN), summed over all leading dims by the GEMM
    gb = sum_r gY[r]                (OUT,)

W^T and gY^T are read in place as transposed operands of ``gemm`` (BLAS transpose flags on
the CPU, the tiled kernel's flags on CUDA), so no transposed copy is ever made.
"""

import math

from minicbam import device
from minicbam.function import Function, check_same_device
from minicbam.kernels.gemm import add_bias, bias_grad, gemm


class Linear(Function):
    fresh_input_grads = True  # gx, gw and gb are new arrays, each returned once

    def forward(self, x, w, b=None):
        OUT, IN = w.shape
        x_shape = tuple(x.shape)
        R = math.prod(x_shape[:-1])  # math.prod: np.prod of a tuple costs ~8 us
        x2 = x.reshape((R, IN))
        y = device.empty((R, OUT), x.dtype, device.device_of(x))
        gemm(y, x2, w, tb=True)
        if b is not None:
            add_bias(y.reshape((R, OUT, 1)), b, OUT, 1)
        self.x2, self.w, self.x_shape, self.has_bias = x2, w, x_shape, b is not None
        return y.reshape(x_shape[:-1] + (OUT,))

    def backward(self, gy):
        x2, w = self.x2, self.w
        R, (OUT, IN) = x2.shape[0], w.shape
        gy2 = gy.reshape((R, OUT))
        dev = device.device_of(gy)
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gx = gemm(device.empty((R, IN), gy.dtype, dev), gy2, w).reshape(self.x_shape)
        if self.needs_input_grad[1]:
            gw = gemm(device.empty((OUT, IN), gy.dtype, dev), gy2, x2, ta=True)
        if not self.has_bias:
            return gx, gw
        if self.needs_input_grad[2]:
            gb = bias_grad(gy2.reshape((R, OUT, 1)), OUT, 1)
        return gx, gw, gb


def _check(x, w, b):
    check_same_device("linear", [t for t in (x, w, b) if t is not None])
    if w.ndim != 2:
        raise ValueError(
            f"linear: expected weight of 2 dimensions (out_features, in_features), "
            f"got shape {w.shape}"
        )
    if x.ndim == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} does not match weight of shape "
            f"{w.shape} (expected input (..., {w.shape[1]}))"
        )
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: expected bias of shape ({w.shape[0]},), got shape {b.shape}")
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        got = f"input {x.dtype}, weight {w.dtype}" + ("" if b is None else f", bias {b.dtype}")
        raise TypeError(f"linear: expected input, weight and bias of one dtype, got {got}")
    if x.dtype.kind != "f":
        raise TypeError(f"linear: expected a floating-point input, got dtype {x.dtype}")


def linear(input, weight, bias=None):
    """``y = input @ weight^T + bias``, input (..., in_features), as torch's ``F.linear``."""
    _check(input, weight, bias)
    fn = Linear()
    return fn(input, weight) if bias is None else fn(input, weight, bias)
