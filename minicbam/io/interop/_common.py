"""Shared machinery of the state-dict converters: prefixes, backbone keys, unknown-key errors.

A converter walks a flat ``dict[str, numpy.ndarray]``. Each key is either

* inside an attention module: ``locate(key)`` returns ``(output_prefix, key_in_module)``
  (for a whole ResNet the prefix is ``"layerX.Y.<attention attribute>."``, for a single module
  it is empty), and ``rename(key_in_module, array, key)`` returns the new key and array, or
  ``None`` when the module has no such parameter;
* a torchvision-named ResNet key (``conv1``, ``bn1``, ``layerX.Y.convN``/``bnN``/
  ``downsample.0|1``, ``fc``), which every supported layout shares and is copied as is;
* anything else, which is reported: a converter never drops weights silently.
"""

import re

import numpy as np

MODULE_PREFIX = "module."  # added by torch.nn.DataParallel / DistributedDataParallel
BN_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_BACKBONE_KEY = re.compile(
    r"(conv1|bn1|fc|layer\d+\.\d+\.(conv\d+|bn\d+|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"
)


def unwrap(state_dict):
    """Take ``checkpoint["state_dict"]`` if given a whole checkpoint; drop ``module.``."""
    inner = state_dict.get("state_dict")
    if isinstance(inner, dict):
        state_dict = inner
    return {key.removeprefix(MODULE_PREFIX): value for key, value in state_dict.items()}


def convert(state_dict, locate, rename, source):
    """Apply ``locate``/``rename`` (see the module docstring) to every key of ``state_dict``."""
    out, unknown = {}, []
    for key, value in unwrap(state_dict).items():
        located = locate(key)
        if located is None:
            if _BACKBONE_KEY.fullmatch(key):
                out[key] = np.asarray(value)
            else:
                unknown.append(key)
            continue
        prefix, inner = located
        renamed = rename(inner, np.asarray(value), key)
        if renamed is None:
            unknown.append(key)
        else:
            out[prefix + renamed[0]] = renamed[1]
    if unknown:
        shown = ", ".join(unknown[:20]) + (
            f", ... ({len(unknown)} in all)" if len(unknown) > 20 else ""
        )
        raise KeyError(f"{source}: keys not recognised (nothing was converted): {shown}")
    return out


def block_locator(source_attr, target_attr, module_prefixes):
    """``locate`` for ``layerX.Y.<source_attr>.*`` blocks and bare modules' top-level keys."""
    pattern = re.compile(rf"(layer\d+\.\d+\.){re.escape(source_attr)}\.(.+)")

    def locate(key):
        match = pattern.fullmatch(key)
        if match:
            return match.group(1) + target_attr + ".", match.group(2)
        if key.startswith(module_prefixes):
            return "", key
        return None

    return locate


def squeeze_1x1(weight, key):
    """(out, in, 1, 1) 1x1-conv weight -> (out, in) linear weight."""
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"{key}: expected a 1x1 conv weight (out, in, 1, 1), got {weight.shape}")
    return weight[:, :, 0, 0]


def unsqueeze_1x1(weight, key):
    """(out, in) linear weight -> (out, in, 1, 1) 1x1-conv weight."""
    if weight.ndim != 2:
        raise ValueError(f"{key}: expected a linear weight (out, in), got shape {weight.shape}")
    return weight[:, :, None, None]


def check_spatial_conv(weight, key):
    """The spatial-attention conv maps the 2 pooled maps to 1: shape (1, 2, k, k)."""
    if weight.ndim != 4 or weight.shape[:2] != (1, 2):
        raise ValueError(f"{key}: expected a spatial conv weight (1, 2, k, k), got {weight.shape}")
    return weight
