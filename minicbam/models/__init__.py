"""``minicbam.models``: ResNets with optional SE / CBAM attention, and a small digits CNN.

``resnet18/34/50/101(num_classes=1000, attention=None, stem="imagenet", **kwargs)`` use
torchvision's layout and key names, each block's attention under ``layerX.Y.attn``;
``DigitsCNN`` is a two-block CNN for 8x8 and 28x28 digits.
"""

from minicbam.models.digits import ConvBlock, DigitsCNN
from minicbam.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ConvBlock",
    "DigitsCNN",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]
