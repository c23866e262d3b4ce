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
    "abs", "add", "amax", "argmax", "broadcast_to", "cast", "cat", "clamp", "compare", "div",
    "exp", "expand", "flatten", "getitem", "log", "max", "mean", "move", "mul", "neg",
    "permute", "pow", "relu", "reshape", "sigmoid", "sqrt", "squeeze", "stack", "sub", "sum",
    "tanh", "transpose", "unsqueeze", "var",
]
