"""PyTorch re-creations of the reference attention modules, for conversion and parity tests.

Import this module only after ``pytest.importorskip("torch")``. Written from the public code:

* ``OfficialCBAM``: Jongchan/attention-module ``MODELS/cbam.py``. ``BasicConv`` is a conv
  without bias (padding ``(k - 1) // 2``) then ``BatchNorm2d(eps=1e-5, momentum=0.01,
  affine=True)``; ``ChannelGate.mlp`` is ``Sequential(Flatten, Linear, ReLU, Linear)`` with
  ``hidden = C // reduction_ratio``, applied to whole-map avg/max pools, summed, sigmoid;
  ``ChannelPool`` concatenates channel MAX then MEAN; the spatial kernel is 7.
* ``TimmCbam``: timm ``layers/cbam.py`` ``CbamModule`` defaults: ``fc1``/``fc2`` 1x1 convs
  without bias, ReLU, ``hidden = make_divisible(C * rd_ratio, 1, round_limit=0.)`` (i.e.
  ``max(1, round(C * rd_ratio))``); spatial ``ConvNormAct(2, 1, k, apply_act=False)`` = ``conv``
  (no bias, padding ``(k - 1) // 2``) + ``bn`` (BatchNorm2d defaults) on cat(mean, amax).
* ``TimmSE``: timm ``layers/squeeze_excite.py`` ``SEModule`` defaults: mean pool, ``fc1``
  (1x1 conv with bias), ReLU, ``fc2`` (1x1 conv with bias), sigmoid;
  ``hidden = make_divisible(C * rd_ratio, 8, round_limit=0.)``.
* ``TorchCBAM`` and ``TorchSE``: minicbam's own layout and maths (docs/api.md), in PyTorch, so a
  converted state dict can be loaded with ``strict=True`` and its outputs compared.
"""

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """timm's channel rounding: nearest multiple of ``divisor``, at least ``min_value``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


# ------------------------------------------------------------------------- official CBAM


class _BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, padding=0, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class _Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class _ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max")):
        super().__init__()
        hidden = gate_channels // reduction_ratio
        self.mlp = nn.Sequential(
            _Flatten(),
            nn.Linear(gate_channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, gate_channels),
        )
        self.pool_types = tuple(pool_types)

    def forward(self, x):
        window = (x.size(2), x.size(3))
        att = 0
        for pool_type in self.pool_types:
            pool = F.avg_pool2d if pool_type == "avg" else F.max_pool2d
            att = att + self.mlp(pool(x, window, stride=window))
        return x * torch.sigmoid(att)[:, :, None, None]


class _ChannelPool(nn.Module):
    def forward(self, x):
        # The official order: MAX first, then MEAN.
        return torch.cat((x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)), dim=1)


class _SpatialGate(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.compress = _ChannelPool()
        self.spatial = _BasicConv(2, 1, kernel_size, padding=(kernel_size - 1) // 2, relu=False)

    def forward(self, x):
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class OfficialCBAM(nn.Module):
    """Keys: ``ChannelGate.mlp.{1,3}.*``, ``SpatialGate.spatial.conv.weight``, ``...bn.*``."""

    def __init__(
        self, gate_channels, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False
    ):
        super().__init__()
        self.ChannelGate = _ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = _SpatialGate()

    def forward(self, x):
        x = self.ChannelGate(x)
        return x if self.no_spatial else self.SpatialGate(x)


# ----------------------------------------------------------------------------------- timm


class _ConvNormAct(nn.Module):
    """timm ``ConvNormAct(..., apply_act=False)``: conv (no bias) then BatchNorm."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class _TimmChannelAttn(nn.Module):
    def __init__(self, channels, rd_channels, mlp_bias=False):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias)

    def forward(self, x):
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * torch.sigmoid(x_avg + x_max)


class _TimmSpatialAttn(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = _ConvNormAct(2, 1, kernel_size)

    def forward(self, x):
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(x_attn))


class TimmCbam(nn.Module):
    """Keys: ``channel.fc{1,2}.weight (out, in, 1, 1)``, ``spatial.conv.conv.weight``, ``.bn.*``."""

    def __init__(self, channels, rd_ratio=1.0 / 16, spatial_kernel_size=7, mlp_bias=False):
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, 1, round_limit=0.0)
        self.channel = _TimmChannelAttn(channels, rd_channels, mlp_bias)
        self.spatial = _TimmSpatialAttn(spatial_kernel_size)

    def forward(self, x):
        return self.spatial(self.channel(x))


class TimmSE(nn.Module):
    """Keys: ``fc1.weight (hidden, C, 1, 1)``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``."""

    def __init__(self, channels, rd_ratio=1.0 / 16, rd_divisor=8):
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x):
        x_se = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(x_se)


# ------------------------------------------------------------------- minicbam's layout


class _ChannelAttention(nn.Module):
    def __init__(self, channels, hidden, bias=True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=bias),
        )

    def forward(self, x):
        att = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class _SpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        # minicbam's order (the paper's Eq. 3): MEAN first, then MAX.
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class TorchCBAM(nn.Module):
    """minicbam ``CBAM`` in PyTorch: ``channel.mlp.{0,2}.*``, ``spatial.conv.weight``, ``.bn.*``."""

    def __init__(self, channels, reduction=16, kernel_size=7, spatial=True, bias=True):
        super().__init__()
        self.channel = _ChannelAttention(channels, max(1, channels // reduction), bias)
        self.spatial = _SpatialAttention(kernel_size) if spatial else None

    def forward(self, x):
        x = self.channel(x)
        return x if self.spatial is None else self.spatial(x)


class TorchSE(nn.Module):
    """minicbam ``SqueezeExcitation`` in PyTorch: ``fc1.weight (hidden, C)``, ``fc2.*``."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


def randomize(module, seed=0):
    """Give every parameter and BatchNorm running statistic random, non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return module.eval()


def numpy_state_dict(module):
    """``module.state_dict()`` as ``dict[str, numpy.ndarray]``."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state_dict(module, state_dict, strict=True):
    """Load a ``dict[str, numpy.ndarray]`` into ``module``; returns torch's key report."""
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}
    return module.load_state_dict(tensors, strict=strict)


# ------------------------------------------------------------- reference ResNets (appended)
# torchvision's ``BasicBlock`` / ``Bottleneck`` / ``ResNet`` with an attention module applied
# to the residual branch after its last BN and before the addition, as both the official
# CBAM ``model_resnet.py`` (attribute ``cbam``) and timm's ``resnet.py`` (attribute ``se``)
# do. ``attn_name`` picks the attribute, so each source's keys come out as its own.


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn=None, attn_name="attn"):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.attn_name = attn_name
        if attn is not None:
            setattr(self, attn_name, attn)

    def _finish(self, out, x):
        attn = getattr(self, self.attn_name, None)
        if attn is not None:
            out = attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self._finish(self.bn2(self.conv2(out)), x)


class TorchBottleneck(TorchBasicBlock):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn=None, attn_name="attn"):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.attn_name = attn_name
        if attn is not None:
            setattr(self, attn_name, attn)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._finish(self.bn3(self.conv3(out)), x)


class TorchResNet(nn.Module):
    """torchvision's ResNet; ``make_attn(channels)`` builds each block's module (or None).

    ``stem="cifar"``: 3x3 stride-1 conv1 and no max-pool. Stage widths ``width * (1, 2, 4, 8)``.
    """

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        make_attn=None,
        attn_name="attn",
        stem="imagenet",
        width=64,
    ):
        super().__init__()
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        attn = (make_attn or (lambda channels: None), attn_name)
        self.layer1 = self._make_layer(block, width, layers[0], 1, attn)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2, attn)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2, attn)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2, attn)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride, attn):
        make_attn, attn_name = attn
        layers = []
        for i in range(blocks):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes * block.expansion):
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            module = make_attn(planes * block.expansion)
            layers.append(
                block(self.inplanes, planes, stride if i == 0 else 1, downsample, module, attn_name)
            )
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
