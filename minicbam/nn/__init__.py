"""``minicbam.nn`` (``import minicbam.nn as nn``): modules shaped like ``torch.nn``.

``Module`` and the containers live in ``module.py`` and ``container.py``; each layer family
has its own file (the attention modules in ``attention.py``); the functional ops are in
``functional.py`` (``nn.functional``).
"""

from minicbam.nn import functional, init, parallel
from minicbam.nn.activation import LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from minicbam.nn.attention import CBAM, ChannelAttention, SpatialAttention, SqueezeExcitation
from minicbam.nn.batchnorm import BatchNorm1d, BatchNorm2d
from minicbam.nn.container import ModuleList, Sequential
from minicbam.nn.conv import Conv2d
from minicbam.nn.dropout import Dropout
from minicbam.nn.flatten import Flatten
from minicbam.nn.linear import Identity, Linear
from minicbam.nn.loss import CrossEntropyLoss, MSELoss, NLLLoss
from minicbam.nn.module import Module
from minicbam.nn.parameter import Parameter
from minicbam.nn.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from minicbam.nn.sync_batchnorm import SyncBatchNorm

__all__ = [
    "CBAM",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "ChannelAttention",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "NLLLoss",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SpatialAttention",
    "SqueezeExcitation",
    "SyncBatchNorm",
    "Tanh",
    "functional",
    "init",
    "parallel",
]
