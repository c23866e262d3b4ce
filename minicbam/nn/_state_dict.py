"""Checks behind ``Module.load_state_dict``: every value is validated and converted to its
tensor's shape and dtype before anything is copied, and every problem names its key.

Deliberate differences from PyTorch: PyTorch copies the keys that fit while it collects the
errors of the others, so a failed load leaves a model half-loaded; here a failed load
changes nothing. PyTorch copies a complex value into a real parameter, dropping the
imaginary part with a warning; here it is an error naming the key."""

import numpy as np

from minicbam.tensor import Tensor


def converted(key, value, t):
    """(``value`` as a contiguous host array of ``t``'s shape and dtype, None) or
    (None, an error message naming ``key``): checked before anything is copied."""
    if isinstance(value, Tensor):
        value = value.numpy()
    elif not isinstance(value, (np.ndarray, np.generic)) and not callable(
        getattr(value, "__array__", None)
    ):
        return None, (
            f'While copying the parameter named "{key}", expected a Tensor or an array from '
            f"checkpoint but received {type(value).__name__}"
        )
    host = np.asarray(value)
    if tuple(host.shape) != t.shape:
        return None, (
            f"size mismatch for {key}: copying a param with shape {tuple(host.shape)} "
            f"from checkpoint, the shape in current model is {t.shape}."
        )
    if host.dtype.kind not in "biuf":
        return None, (
            f'While copying the parameter named "{key}", the checkpoint holds dtype '
            f"{host.dtype}, which cannot be converted to {np.dtype(t.dtype)}"
        )
    try:
        return host.astype(t.dtype, order="C"), None  # a C-contiguous copy; 0-d stays 0-d
    except (TypeError, ValueError, OverflowError) as e:
        return None, (
            f'While copying the parameter named "{key}", converting dtype {host.dtype} to '
            f"{np.dtype(t.dtype)} failed: {e}"
        )


def key_errors(missing, unexpected):
    """PyTorch's wording and order: missing keys first, then unexpected ones."""
    errors = []
    if missing:
        errors.append("Missing key(s) in state_dict: " + _quoted(missing) + ". ")
    if unexpected:
        errors.append("Unexpected key(s) in state_dict: " + _quoted(unexpected) + ". ")
    return errors


def _quoted(keys):
    return ", ".join(f'"{key}"' for key in keys)
