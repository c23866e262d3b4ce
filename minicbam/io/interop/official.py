"""Convert state dicts of the official CBAM code (Jongchan/attention-module) to minicbam's layout.

The official ``CBAM`` (MODELS/cbam.py) is ``ChannelGate`` then ``SpatialGate``:

* ``ChannelGate.mlp`` is ``Sequential(Flatten, Linear(C, hidden), ReLU, Linear(hidden, C))``, so
  its linear layers are ``mlp.1`` and ``mlp.3``; minicbam's MLP has no Flatten and uses
  ``mlp.0`` and ``mlp.2``. The weights are identical (both are ``(out, in)`` linear weights).
* ``SpatialGate.spatial`` is a ``BasicConv`` (``conv`` without bias, then ``bn``). Its
  ``ChannelPool`` concatenates the channel-MAX map before the channel-MEAN map, whereas
  minicbam (like the paper's Eq. 3 and timm) puts MEAN first. The conv weight ``(1, 2, k, k)``
  therefore has its two input channels swapped: ``w_minicbam[:, 0] = w_official[:, 1]`` and
  vice versa; with that swap both modules compute the same function.

In ``model_resnet.py`` every block holds its module as ``layerX.Y.cbam``; minicbam calls it
``layerX.Y.attn``. The other ResNet keys are already torchvision's. The training script wraps
the model in ``DataParallel``, so checkpoint keys start with ``module.`` (stripped), and the
file is a checkpoint ``{"epoch", "arch", "state_dict", "best_prec1", "optimizer"}``: passing the
whole checkpoint uses its ``state_dict``.

Checkpoints from PyTorch < 0.4.1 have no ``bn.num_batches_tracked``; the key then stays absent
and ``load_state_dict(..., strict=False)`` keeps the module's own counter.
"""

from minicbam.io.interop._common import BN_NAMES, block_locator, check_spatial_conv, convert

__all__ = ["from_official", "to_official"]

_SPATIAL_CONV = "spatial.conv.weight"
# official key inside one CBAM module -> minicbam key
_TO_OURS = {
    "ChannelGate.mlp.1.weight": "channel.mlp.0.weight",
    "ChannelGate.mlp.1.bias": "channel.mlp.0.bias",
    "ChannelGate.mlp.3.weight": "channel.mlp.2.weight",
    "ChannelGate.mlp.3.bias": "channel.mlp.2.bias",
    "SpatialGate.spatial.conv.weight": _SPATIAL_CONV,
    **{f"SpatialGate.spatial.bn.{name}": f"spatial.bn.{name}" for name in BN_NAMES},
}
_TO_OFFICIAL = {ours: official for official, ours in _TO_OURS.items()}


def from_official(state_dict):
    """Official CBAM (single module or ResNet) state dict -> minicbam layout.

    Raises ``KeyError`` listing any key that is neither a CBAM parameter nor a torchvision
    ResNet key, and ``ValueError`` for a spatial conv weight that is not ``(1, 2, k, k)``.
    """
    locate = block_locator("cbam", "attn", ("ChannelGate.", "SpatialGate."))
    return convert(state_dict, locate, _renamer(_TO_OURS), "from_official")


def to_official(state_dict):
    """minicbam CBAM (single module or ResNet) state dict -> the official code's layout."""
    locate = block_locator("attn", "cbam", ("channel.", "spatial."))
    return convert(state_dict, locate, _renamer(_TO_OFFICIAL), "to_official")


def _renamer(table):
    def rename(inner, array, key):
        if inner not in table:
            return None
        new = table[inner]
        if _SPATIAL_CONV in (inner, new):
            array = _swap_pool_channels(array, key)
        return new, array

    return rename


def _swap_pool_channels(weight, key):
    """Swap the conv's (max, mean) input channels to (mean, max); the swap is its own inverse."""
    return check_spatial_conv(weight, key)[:, ::-1].copy()
