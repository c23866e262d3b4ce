"""Convert state dicts of timm's ``CbamModule`` / ``SEModule`` (and timm ResNets) to minicbam's.

timm (``timm/layers/cbam.py``) builds ``CbamModule`` from

* ``channel``: ``ChannelAttn`` with ``fc1``/``fc2`` as 1x1 ``Conv2d`` (bias only when
  ``mlp_bias=True``; off by default), weights ``(hidden, C, 1, 1)`` and ``(C, hidden, 1, 1)``.
  A 1x1 convolution on a pooled ``(N, C, 1, 1)`` map is a linear layer, so the weights squeeze
  to minicbam's ``channel.mlp.0.weight (hidden, C)`` and ``channel.mlp.2.weight (C, hidden)``.
* ``spatial``: ``SpatialAttn`` whose ``conv`` is a ``ConvNormAct(2, 1, k, apply_act=False)``,
  i.e. ``conv.conv`` (no bias) then ``conv.bn``. It pools MEAN then MAX, minicbam's order, so
  the conv weight is copied unchanged to ``spatial.conv.weight``; ``conv.bn.*`` -> ``spatial.bn.*``.

timm's ``SEModule`` (``squeeze_excite.py``) has ``fc1``/``fc2`` 1x1 convs with bias; they map to
minicbam's ``SqueezeExcitation`` ``fc1``/``fc2`` linear weights. Its optional norm
(``use_norm=True``, keys ``bn.*``) has no minicbam counterpart and is reported as unknown.
Note that timm sizes the hidden layer as ``make_divisible(C * rd_ratio, divisor)`` (rounded, and
a multiple of 8 for ``SEModule``), while minicbam uses ``max(1, C // reduction)``: the shapes
must agree for the converted weights to load.

A timm ``ResNet`` built with ``attn_layer`` keeps each block's module as ``layerX.Y.se``; minicbam
calls it ``layerX.Y.attn``. The other keys are torchvision's. A ``module.`` prefix is stripped.
"""

from minicbam.io.interop._common import (
    BN_NAMES,
    block_locator,
    check_spatial_conv,
    convert,
    squeeze_1x1,
    unsqueeze_1x1,
)

__all__ = ["from_timm", "to_timm"]


def _keep(array, key):
    return array


# timm key inside one attention module -> (minicbam key, timm->minicbam, minicbam->timm)
_TABLE = {
    "channel.fc1.weight": ("channel.mlp.0.weight", squeeze_1x1, unsqueeze_1x1),
    "channel.fc1.bias": ("channel.mlp.0.bias", _keep, _keep),
    "channel.fc2.weight": ("channel.mlp.2.weight", squeeze_1x1, unsqueeze_1x1),
    "channel.fc2.bias": ("channel.mlp.2.bias", _keep, _keep),
    "spatial.conv.conv.weight": ("spatial.conv.weight", check_spatial_conv, check_spatial_conv),
    **{f"spatial.conv.bn.{n}": (f"spatial.bn.{n}", _keep, _keep) for n in BN_NAMES},
    # SEModule
    "fc1.weight": ("fc1.weight", squeeze_1x1, unsqueeze_1x1),
    "fc1.bias": ("fc1.bias", _keep, _keep),
    "fc2.weight": ("fc2.weight", squeeze_1x1, unsqueeze_1x1),
    "fc2.bias": ("fc2.bias", _keep, _keep),
}
_TO_OURS = {timm: (ours, forward) for timm, (ours, forward, _) in _TABLE.items()}
_TO_TIMM = {ours: (timm, backward) for timm, (ours, _, backward) in _TABLE.items()}
_MODULE_PREFIXES = ("channel.", "spatial.", "fc1.", "fc2.")


def from_timm(state_dict):
    """timm ``CbamModule``/``SEModule`` (single module or ResNet) state dict -> minicbam layout.

    Raises ``KeyError`` listing any key that is neither an attention parameter nor a
    torchvision ResNet key, and ``ValueError`` for weights of an unexpected shape.
    """
    locate = block_locator("se", "attn", _MODULE_PREFIXES)
    return convert(state_dict, locate, _renamer(_TO_OURS), "from_timm")


def to_timm(state_dict):
    """minicbam CBAM/SqueezeExcitation (single module or ResNet) state dict -> timm layout."""
    locate = block_locator("attn", "se", _MODULE_PREFIXES)
    return convert(state_dict, locate, _renamer(_TO_TIMM), "to_timm")


def _renamer(table):
    def rename(inner, array, key):
        if inner not in table:
            return None
        new, transform = table[inner]
        return new, transform(array, key)

    return rename
