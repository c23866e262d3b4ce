"""``minicbam.nn.functional`` (``import minicbam.nn.functional as F``): the ops by PyTorch name.

Every name here is defined in its own op file under ``minicbam/ops``; this module only
gathers them, so ``F.conv2d`` and friends read as in PyTorch.
"""

from minicbam.ops.adaptive_pool import adaptive_avg_pool2d, adaptive_max_pool2d
from minicbam.ops.avg_pool2d import avg_pool2d
from minicbam.ops.batch_norm import batch_norm
from minicbam.ops.channel_pool import channel_pool
from minicbam.ops.conv2d import conv2d
from minicbam.ops.cross_entropy import cross_entropy, nll_loss
from minicbam.ops.dropout import dropout
from minicbam.ops.gate import gate
from minicbam.ops.global_pool import global_pool
from minicbam.ops.linear import linear
from minicbam.ops.losses import mse_loss
from minicbam.ops.max_pool2d import max_pool2d
from minicbam.ops.softmax import log_softmax, softmax
from minicbam.ops.squeeze_excite import squeeze_excite
from minicbam.ops.unary import relu, sigmoid, tanh

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "channel_pool",
    "conv2d",
    "cross_entropy",
    "dropout",
    "gate",
    "global_pool",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "relu",
    "sigmoid",
    "softmax",
    "squeeze_excite",
    "tanh",
]
