"""A small CNN with attention for handwritten digits: 8x8 (scikit-learn) or 28x28 (MNIST).

    x (N, 1, H, W)
    block1: conv3x3(1 -> w) -> BN -> ReLU -> attention        (N, w, H, W)
    max-pool 2x2                                              (N, w, H/2, W/2)
    block2: conv3x3(w -> 2w) -> BN -> ReLU -> attention       (N, 2w, H/2, W/2)
    adaptive average pool to 2x2 -> flatten -> fc             (N, num_classes)

Each block's attention (``block1.attn``, ``block2.attn``) rescales the rectified features, so
its maps show which channels and which pixels of a digit the network relies on
(``last_channel_weights``, ``last_spatial_map``). The adaptive 2x2 pool keeps a coarse layout
of the strokes (a global pool was less accurate) and makes the head independent of the input
size. With ``width=32`` it has 22,910 parameters (CBAM, reduction 8). ``minicbam train``
trains it on the 8x8 digits; README.md gives the accuracy and time of that run.
"""

from minicbam.nn.activation import ReLU
from minicbam.nn.attention import make_attention
from minicbam.nn.batchnorm import BatchNorm2d
from minicbam.nn.conv import Conv2d
from minicbam.nn.linear import Linear
from minicbam.nn.module import Module
from minicbam.nn.pooling import AdaptiveAvgPool2d, MaxPool2d

__all__ = ["ConvBlock", "DigitsCNN"]


class ConvBlock(Module):
    """conv3x3 (no bias: the BN has one) -> BN -> ReLU -> optional attention ``attn``."""

    def __init__(self, in_channels, out_channels, attn=None):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = BatchNorm2d(out_channels)
        self.relu = ReLU()
        self.add_module("attn", attn)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return x if self.attn is None else self.attn(x)


class DigitsCNN(Module):
    """``DigitsCNN(num_classes=10, in_channels=1, attention="cbam", width=32, ...)``.

    ``attention`` and ``attention_variant`` as in ``minicbam.models.resnet18``; ``reduction``
    defaults to 8 (hidden 4 and 8 at width 32) and ``kernel_size`` to 3, as a 7x7 spatial
    kernel would be mostly padding on 8x8 and 4x4 maps.
    """

    def __init__(
        self,
        num_classes=10,
        in_channels=1,
        attention="cbam",
        width=32,
        attention_variant="default",
        reduction=8,
        kernel_size=3,
        **attention_kwargs,
    ):
        super().__init__()
        kwargs = dict(reduction=reduction, kernel_size=kernel_size, **attention_kwargs)

        def attn(channels):
            return make_attention(attention, channels, attention_variant, **kwargs)

        self.block1 = ConvBlock(in_channels, width, attn(width))
        self.pool = MaxPool2d(2)
        self.block2 = ConvBlock(width, 2 * width, attn(2 * width))
        self.avgpool = AdaptiveAvgPool2d(2)  # keeps a coarse layout: where the strokes are
        self.fc = Linear(2 * width * 4, num_classes)

    def forward(self, x):
        x = self.block2(self.pool(self.block1(x)))
        return self.fc(self.avgpool(x).flatten(1))
