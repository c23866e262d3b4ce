"""ResNet-18/34/50/101 (He et al., CVPR 2016) with optional SE / CBAM attention in every block.

The layout and key names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``), so torchvision, timm and official-CBAM checkpoints convert
by renaming at most the attention keys (``minicbam.io.interop``). A residual block computes

    y = relu(A(R(x)) + S(x))

with R the residual branch (two 3x3 convs, or 1x1-3x3-1x1 for the bottleneck, each followed
by BatchNorm), S the shortcut (identity, or a strided 1x1 conv + BN when the shape changes)
and A the block's attention module ``attn`` (identity when ``attention=None``). As in the CBAM
paper (Fig. 3) and the SE paper (Fig. 3), A acts on the branch after its last BatchNorm and
before the addition, so the identity path stays clean.

Each ``relu(bn(conv(x)))`` runs as one fused BN + ReLU op (ops/batch_norm_relu.py) and the
block's ``relu(A(R(x)) + S(x))`` as one fused add + ReLU (ops/add_relu.py): the same values,
gradients and running statistics as the separate modules, one pass over the data each way
instead of two, and no stored pre-activation. A module replaced by the user (a folded BN,
another activation) runs as given.

Stems: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool: 224 -> 56) and ``"cifar"`` (3x3/1
conv, BN, ReLU, no pooling: 32 -> 32). Stage widths are ``width * (1, 2, 4, 8)`` (64 as
published; smaller for tests). Initialisation is torchvision's: convs
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BatchNorm weight 1 and bias 0, fc
the Linear default; the attention modules keep their own (preset) initialisation.
Parameter counts: resnet18 11,689,512; resnet50 25,557,032; resnet50 + CBAM (official
layout) 28,089,624.
"""

from minicbam.function import no_grad
from minicbam.nn import init
from minicbam.nn.activation import ReLU
from minicbam.nn.attention import make_attention
from minicbam.nn.batchnorm import BatchNorm2d
from minicbam.nn.container import Sequential
from minicbam.nn.conv import Conv2d
from minicbam.nn.linear import Linear
from minicbam.nn.module import Module
from minicbam.nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from minicbam.ops.add_relu import add_relu

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]

STEMS = ("imagenet", "cifar")


def conv3x3(in_planes, out_planes, stride=1):
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def bn_relu(bn, relu, x):
    """``relu(bn(x))``, fused into one op (ops/batch_norm_relu.py) when the modules are the
    plain BatchNorm2d and ReLU; a replaced module (Identity, SyncBatchNorm, another
    activation) runs as given."""
    if type(bn) is BatchNorm2d and type(relu) is ReLU:
        return bn.forward_relu(x)
    return relu(bn(x))


def residual_relu(relu, out, shortcut):
    """``relu(out + shortcut)``, fused (ops/add_relu.py) for a plain ReLU and equal shapes."""
    if type(relu) is ReLU and out.shape == shortcut.shape and out.dtype == shortcut.dtype:
        return add_relu(out, shortcut)
    return relu(out + shortcut)


class _Block(Module):
    """What both blocks share: the attention slot and the residual sum."""

    def _set_attention(self, attn):
        self.add_module("attn", attn)  # None: no attention (and no state-dict keys)

    def _finish(self, out, x):
        if self.attn is not None:
            out = self.attn(out)  # after the last BN, before the addition
        shortcut = x if self.downsample is None else self.downsample(x)
        return residual_relu(self.relu, out, shortcut)


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34). ``attn`` acts on ``planes`` channels."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu = ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.add_module("downsample", downsample)
        self._set_attention(attn)

    def forward(self, x):
        out = bn_relu(self.bn1, self.relu, self.conv1(x))
        out = self.bn2(self.conv2(out))
        return self._finish(out, x)


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 expand (ResNet-50/101).

    ``attn`` acts on ``planes * 4`` channels.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = ReLU()
        self.add_module("downsample", downsample)
        self._set_attention(attn)

    def forward(self, x):
        out = bn_relu(self.bn1, self.relu, self.conv1(x))
        out = bn_relu(self.bn2, self.relu, self.conv2(out))
        out = self.bn3(self.conv3(out))
        return self._finish(out, x)


class ResNet(Module):
    """``ResNet(block, layers, num_classes=1000, attention=None, stem="imagenet", ...)``.

    ``attention``: None, "se", "cam", "sam" or "cbam"; ``attention_variant``: "default",
    "official", "timm" or "paper" (the CBAM presets, see ``minicbam.nn.attention``);
    ``attention_kwargs`` (e.g. ``reduction=16, kernel_size=7``) go to every attention module.
    ``zero_init_residual`` zeroes each block's last BN weight, as torchvision's option.
    """

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        attention=None,
        stem="imagenet",
        attention_variant="default",
        width=64,
        in_channels=3,
        zero_init_residual=False,
        **attention_kwargs,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"ResNet: stem must be one of {STEMS}, got {stem!r}")
        self._attention = (attention, attention_variant, attention_kwargs)
        self.inplanes = width
        self._make_stem(stem, in_channels, width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(width * 8 * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stem(self, stem, in_channels, width):
        if stem == "imagenet":
            self.conv1 = Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, width)
            self.add_module("maxpool", None)
        self.bn1 = BatchNorm2d(width)
        self.relu = ReLU()

    def _make_layer(self, block, planes, blocks, stride=1):
        kind, variant, kwargs = self._attention
        layer = Sequential()
        for i in range(blocks):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes * block.expansion):
                downsample = Sequential(
                    conv1x1(self.inplanes, planes * block.expansion, stride),
                    BatchNorm2d(planes * block.expansion),
                )
            attn = make_attention(kind, planes * block.expansion, variant, **kwargs)
            layer.append(block(self.inplanes, planes, stride if i == 0 else 1, downsample, attn))
            self.inplanes = planes * block.expansion
        return layer

    def _init_weights(self, zero_init_residual):
        with no_grad():
            for name, m in self.named_modules():
                if ".attn" in name:
                    continue  # attention modules keep their preset's initialisation
                if isinstance(m, Conv2d):
                    init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, BatchNorm2d):
                    init.ones_(m.weight)
                    init.zeros_(m.bias)
            if zero_init_residual:  # each block then starts as its shortcut
                for m in self.modules():
                    if isinstance(m, (BasicBlock, Bottleneck)):
                        init.zeros_(m.bn2.weight if isinstance(m, BasicBlock) else m.bn3.weight)

    def forward_features(self, x):
        """The last stage's feature map (N, width * 8 * expansion, H / 32, W / 32)."""
        x = bn_relu(self.bn1, self.relu, self.conv1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        x = self.avgpool(self.forward_features(x))
        return self.fc(x.flatten(1))

    def attention_modules(self):
        """``(name, module)`` of every block's attention module, e.g. ``("layer1.0.attn", m)``."""
        return [(name, m) for name, m in self.named_modules() if name.endswith(".attn")]


def resnet18(num_classes=1000, attention=None, stem="imagenet", **kwargs):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``kwargs`` as ``ResNet``'s."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, attention, stem, **kwargs)


def resnet34(num_classes=1000, attention=None, stem="imagenet", **kwargs):
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); ``kwargs`` as ``ResNet``'s."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, attention, stem, **kwargs)


def resnet50(num_classes=1000, attention=None, stem="imagenet", **kwargs):
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``kwargs`` as ``ResNet``'s."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, attention, stem, **kwargs)


def resnet101(num_classes=1000, attention=None, stem="imagenet", **kwargs):
    """ResNet-101 (Bottleneck, [3, 4, 23, 3]); ``kwargs`` as ``ResNet``'s."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, attention, stem, **kwargs)
