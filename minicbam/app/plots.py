"""Plots: training curves and attention maps, drawn with matplotlib's Agg backend (no display).

- ``plot_curves(history, path)``: loss and accuracy per epoch (train and test) side by side.
- ``attention_maps(model)``: the spatial-attention maps the model's attention modules kept
  from its last forward (``last_spatial_map``, (N, 1, h, w)), by module name.
- ``grad_cam(model, x, target=None)``: Grad-CAM (Selvaraju et al., ICCV 2017) of the last
  conv stage: with A = the stage's feature maps (N, K, h, w) and y_c the class score,

      alpha_k = mean_{h,w} dy_c / dA_k            cam = relu(sum_k alpha_k A_k)

  scaled to [0, 1]. The model must offer ``forward_features`` (the last stage's maps) and
  either ``forward_head`` or ``avgpool`` + ``fc`` (as minicbam's ResNets do; DigitsCNN's
  ``block1 -> pool -> block2`` is recognised too).
- ``plot_attention(model, image, path, ...)``: one PNG with the input, each block's spatial
  map upsampled to the input's size and laid over it, and the Grad-CAM heat map.

Files are written to a temporary name and renamed, so a reader never sees half a PNG.
"""

import math
import os

import matplotlib

matplotlib.use("Agg")  # before pyplot: never needs a display, safe in tests and over ssh

import matplotlib.pyplot as plt
import numpy as np

import minicbam as mc
from minicbam.app.files import write_atomic

__all__ = ["attention_maps", "grad_cam", "plot_attention", "plot_curves", "upsample"]


def save_figure(fig, path):
    """Write ``fig`` atomically to ``path`` (PNG or SVG, from the suffix) and close it."""
    suffix = os.path.splitext(path)[1].lower() or ".png"

    def write(f):
        # svg.fonttype "none": SVG labels stay <text> (searchable, small), not glyph outlines
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(f, format=suffix[1:], dpi=110, bbox_inches="tight")

    try:
        write_atomic(path, write, binary=True)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- curves


def plot_curves(history, path, train_note=""):
    """Loss and accuracy curves from metrics rows (dicts as in ``metrics.csv``).

    ``train_note`` is appended to the train loss's legend (e.g. "with label smoothing 0.1",
    which puts a floor under that loss but not under the test loss).
    """
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-o"), ("test", "-s")):
        label = f"{split} ({train_note})" if split == "train" and train_note else split
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, ms=3, label=label)
        ax_acc.plot(
            epochs, [100 * row[f"{split}_acc"] for row in history], style, ms=3, label=split
        )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


# ------------------------------------------------------------------------ attention maps


def _attention_modules(model):
    if hasattr(model, "attention_modules"):
        return model.attention_modules()
    found = []
    for name, m in model.named_modules():  # parents come before their children
        if hasattr(m, "last_spatial_map") and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, m))  # a CBAM, not also its SpatialAttention part
    return found


def attention_maps(model):
    """``[(name, map (N, h, w) ndarray)]`` of every module that kept a spatial map."""
    maps = []
    for name, module in _attention_modules(model):
        spatial = getattr(module, "last_spatial_map", None)
        if spatial is not None:
            maps.append((name, spatial.numpy()[:, 0]))
    return maps


def upsample(a, size):
    """Bilinear resize of a 2-D map to ``size`` (H, W), half-pixel centres
    (``align_corners=False``, as ``F.interpolate``)."""
    rows = _axis_weights(a.shape[0], size[0])
    cols = _axis_weights(a.shape[1], size[1])
    return rows @ a @ cols.T


def _axis_weights(n_in, n_out):
    # (n_out, n_in) interpolation matrix for one axis.
    centres = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centres - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _head(model):
    if hasattr(model, "forward_head"):
        return model.forward_head
    if hasattr(model, "avgpool") and hasattr(model, "fc"):
        return lambda a: model.fc(model.avgpool(a).flatten(1))
    raise TypeError(f"grad_cam: {type(model).__name__} has no forward_head (or avgpool + fc)")


def _features(model):
    if hasattr(model, "forward_features"):
        return model.forward_features
    if all(hasattr(model, k) for k in ("block1", "pool", "block2")):
        # DigitsCNN without forward_features: its forward is block2(pool(block1(x))) -> head.
        return lambda x: model.block2(model.pool(model.block1(x)))
    raise TypeError(f"grad_cam: {type(model).__name__} has no forward_features")


def grad_cam(model, x, target=None):
    """(cam (N, h, w) in [0, 1], logits (N, classes) ndarray) for the class ``target``
    (default: each sample's predicted class). Runs one forward in eval mode, so the
    attention modules' maps are those of ``x`` afterwards."""
    features_of = _features(model)
    model.eval()
    with mc.no_grad():
        features = features_of(x)
    # A leaf copy of the features: backward through the head alone gives dy_c / dA.
    a = features.detach().requires_grad_()
    logits = _head(model)(a)
    scores = logits.numpy()
    classes = scores.argmax(1) if target is None else np.broadcast_to(target, len(scores))
    one_hot = np.zeros(scores.shape, dtype=scores.dtype)
    one_hot[np.arange(len(scores)), classes] = 1.0
    (logits * mc.tensor(one_hot, device=logits.device)).sum().backward()
    alpha = a.grad.numpy().mean(axis=(2, 3), keepdims=True)  # (N, K, 1, 1)
    cam = np.maximum((alpha * a.numpy()).sum(axis=1), 0.0)  # (N, h, w)
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return cam / np.where(peak > 0, peak, 1.0), scores


def _display(image):
    """(C, H, W) in [0, 1] -> something imshow draws, with its colormap."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if image.shape[0] == 1:
        return image[0], "gray"
    return image.transpose(1, 2, 0), None


def _stretch(a):
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def _softmax(scores):
    e = np.exp(scores - scores.max())
    return e / e.sum()


def plot_attention(model, image, path, label=None, classes=None, device="cpu"):
    """Draw ``image`` (C, H, W), its spatial-attention maps and Grad-CAM into ``path``.

    Returns ``{"maps": [(name, (h, w))], "predicted": int, "path": path}``.
    """
    x = mc.tensor(np.asarray(image, dtype=np.float32)[None]).to(device)
    cam, scores = grad_cam(model, x)
    maps = attention_maps(model)
    height, width = image.shape[1:]
    picture, cmap = _display(image)
    # Sigmoid maps often span a narrow band (e.g. 0.45-0.60): stretch each to [0, 1] for
    # display and print its true range in the title.
    panels = [("input", None)] + [
        (
            f"{n} ({m.shape[1]}x{m.shape[2]})\nspatial {m[0].min():.2f}-{m[0].max():.2f}",
            _stretch(m[0]),
        )
        for n, m in maps
    ]
    panels.append((f"Grad-CAM (last stage {cam.shape[1]}x{cam.shape[2]})", cam[0]))
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), squeeze=False)
    extent = (0, width, height, 0)
    for ax, (title, heat) in zip(axes.flat, panels):
        ax.imshow(picture, cmap=cmap, extent=extent, interpolation="nearest")
        if heat is not None:
            overlay = upsample(heat, (8 * height, 8 * width))
            ax.imshow(
                overlay,
                cmap="jet",
                alpha=0.5,
                vmin=0.0,
                vmax=1.0,
                extent=extent,
                interpolation="bilinear",
            )
        ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    predicted = int(scores[0].argmax())
    fig.suptitle(
        _caption(label, predicted, _softmax(scores[0])[predicted], classes, maps), fontsize=10
    )
    save_figure(fig, path)
    return {"maps": [(n, m.shape[1:]) for n, m in maps], "predicted": predicted, "path": path}


def _caption(label, predicted, p, classes, maps):
    def name(k):
        return str(classes[k]) if classes else str(k)

    text = f"predicted {name(predicted)} (p={p:.2f})"
    if label is not None:
        text = f"label {name(int(label))}, " + text
    if not maps:
        text += " - this model has no spatial attention maps"
    return text
