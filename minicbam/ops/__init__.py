"""Every op, one file each (elementwise families share one file per kernel shape).

Each module holds the maths (docstring), the ``Function``, its lowercase functional
wrapper and its CPU and CUDA kernels.
"""

from minicbam.ops.binary import add, compare, div, mul, sub
from minicbam.ops.cast import cast
from minicbam.ops.cat import cat, stack
from minicbam.ops.expand import broadcast_to, expand
from minicbam.ops.getitem import getitem
from minicbam.ops.max import amax, argmax, max
from minicbam.ops.move import move
from minicbam.ops.permute import permute, transpose
from minicbam.ops.reduce import mean, sum
from minicbam.ops.reshape import flatten, reshape, squeeze, unsqueeze
from minicbam.ops.unary import abs, clamp, exp, log, neg, pow, relu, sigmoid, sqrt, tanh
from minicbam.ops.var import var

__all__ = [
    "abs",
    "add",
    "amax",
    "argmax",
    "broadcast_to",
    "cast",
    "cat",
    "clamp",
    "compare",
    "div",
    "exp",
    "expand",
    "flatten",
    "getitem",
    "log",
    "max",
    "mean",
    "move",
    "mul",
    "neg",
    "permute",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "sqrt",
    "squeeze",
    "stack",
    "sub",
    "sum",
    "tanh",
    "transpose",
    "unsqueeze",
    "var",
]

from minicbam.ops.conv2d import conv2d
from minicbam.ops.linear import linear
from minicbam.ops.matmul import matmul

__all__ += ["conv2d", "linear", "matmul"]

from minicbam.ops.cross_entropy import cross_entropy, nll_loss
from minicbam.ops.dropout import dropout
from minicbam.ops.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    l1_loss,
    mse_loss,
    softplus,
)
from minicbam.ops.softmax import log_softmax, softmax

__all__ += [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "dropout",
    "l1_loss",
    "log_softmax",
    "mse_loss",
    "nll_loss",
    "softmax",
    "softplus",
]

from minicbam.ops.adaptive_pool import adaptive_avg_pool2d, adaptive_max_pool2d
from minicbam.ops.avg_pool2d import avg_pool2d
from minicbam.ops.batch_norm import batch_norm
from minicbam.ops.channel_pool import channel_pool
from minicbam.ops.gate import gate
from minicbam.ops.global_pool import global_pool
from minicbam.ops.max_pool2d import max_pool2d
from minicbam.ops.squeeze_excite import squeeze_excite

__all__ += [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "channel_pool",
    "gate",
    "global_pool",
    "max_pool2d",
    "squeeze_excite",
]
