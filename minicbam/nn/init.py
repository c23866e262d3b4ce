"""In-place initialisation of parameters, with PyTorch's formulas (``torch.nn.init``).

For a weight of shape ``(out, in, *kernel)`` the receptive field is ``prod(kernel)`` and

    fan_in = in * receptive,   fan_out = out * receptive
    kaiming_uniform_:  bound = gain * sqrt(3 / fan),   U(-bound, bound)
    kaiming_normal_:   std   = gain / sqrt(fan),       N(0, std^2)
    xavier_uniform_:   bound = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal_:    std   = gain * sqrt(2 / (fan_in + fan_out))

with ``gain = calculate_gain(nonlinearity, a)`` (leaky_relu: sqrt(2 / (1 + a^2))).
Values are drawn on the host from ``minicbam.tensor.generator()`` (so ``mc.manual_seed``
makes initialisation reproducible on every device) and copied into the tensor's existing
array, so a parameter keeps its identity and its device.
"""

import math

import numpy as np

from minicbam import device
from minicbam.tensor import Tensor, generator

_LINEAR_GAINS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)


def copy_into_(tensor, source):
    """Overwrite ``tensor``'s array with ``source`` (a Tensor or a host array), cast to the
    tensor's dtype. A tensor on the tensor's device and of its dtype is copied there directly."""
    same_place = isinstance(source, Tensor) and source.device == tensor.device
    if same_place and source.dtype == tensor.dtype:
        if source.shape != tensor.shape:
            raise ValueError(f"copy_into_: shape {source.shape} does not match {tensor.shape}")
        src = source.data
    else:
        host = source.numpy() if isinstance(source, Tensor) else np.asarray(source)
        src = np.ascontiguousarray(np.asarray(host, dtype=tensor.dtype).reshape(tensor.shape))
    if tensor.device == device.CPU:
        tensor.data[...] = src
    else:
        tensor.data.copy_to_device(src)
    return tensor


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity`` (PyTorch's table)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    receptive = int(np.prod(shape[2:], dtype=np.int64))
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0):
    return copy_into_(tensor, generator().uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0):
    return copy_into_(tensor, generator().normal(mean, std, size=tensor.shape))


def constant_(tensor, val):
    return copy_into_(tensor, np.full(tensor.shape, val))


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def _kaiming_std(tensor, a, mode, nonlinearity):
    fan = _calculate_correct_fan(tensor, mode)
    if fan == 0:  # PyTorch warns and leaves the (empty) tensor alone
        return None
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std  # U(-b, b) has std b / sqrt(3)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    return tensor if std is None else normal_(tensor, 0.0, std)


def xavier_uniform_(tensor, gain=1.0):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound)


def xavier_normal_(tensor, gain=1.0):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)
