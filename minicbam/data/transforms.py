"""Per-sample image transforms on NumPy arrays laid out (C, H, W).

Random transforms draw from a ``numpy.random.Generator`` handed to them at call time,
never from global state: datasets pass a generator seeded from (seed, epoch, index)
(see ``minicbam.data.dataset.sample_rng``), so an augmented run is reproducible and a run
resumed at epoch e sees exactly the crops and flips an uninterrupted run would have seen.

Every transform is called as ``t(x, rng=None)``. Plain callables of one argument (a
``lambda``) are accepted wherever a transform is, through ``apply_transform``.
"""

import numbers

import numpy as np

__all__ = [
    "Transform",
    "Compose",
    "ToFloat",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "apply_transform",
]


def apply_transform(transform, x, rng):
    """Call ``transform`` on ``x``, handing ``rng`` only to ``Transform`` objects."""
    if isinstance(transform, Transform):
        return transform(x, rng)
    return transform(x)


def _require_rng(rng, name):
    # rng=None (a direct call by a user) means unseeded, non-reproducible draws.
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_chw(x, name):
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected an image of shape (C, H, W), got shape {x.shape}")
    return x


class Transform:
    """Base class: subclasses implement ``__call__(self, x, rng=None)``."""

    def __call__(self, x, rng=None):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, sharing one generator (draws happen in list order)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}")

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = apply_transform(t, x, rng)
        return x


class ToFloat(Transform):
    """uint8 pixels in [0, 255] -> float32 in [0, 1]; float input is cast to float32.

    An (H, W) grey image gains a leading channel axis, giving (1, H, W).
    """

    def __call__(self, x, rng=None):
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[None]
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(255)
        if np.issubdtype(x.dtype, np.floating):
            return x.astype(np.float32, copy=False)
        raise TypeError(f"ToFloat: expected uint8 or float pixels, got dtype {x.dtype}")


class Normalize(Transform):
    """Per-channel ``(x - mean[c]) / std[c]`` on a (C, H, W) float image."""

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError("Normalize: mean and std must be scalars or 1-D sequences")
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"Normalize: mean has {len(self.mean)} values but std has {len(self.std)}"
            )
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, x, rng=None):
        x = _check_chw(x, "Normalize")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"Normalize: expected a float image, got dtype {x.dtype}; use ToFloat")
        c = x.shape[0]
        if len(self.mean) not in (1, c):
            raise ValueError(
                f"Normalize: image has {c} channels but mean/std have {len(self.mean)}"
            )
        # (C,) -> (C, 1, 1) so the statistics broadcast over H and W.
        mean = self.mean.astype(x.dtype)[:, None, None]
        std = self.std.astype(x.dtype)[:, None, None]
        return (x - mean) / std


def _pair(value, name):
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, numbers.Integral) for v in value):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def _padding4(padding):
    """torchvision's convention -> (left, top, right, bottom)."""
    if isinstance(padding, numbers.Integral):
        p = (int(padding),) * 4
    else:
        p = tuple(int(v) for v in padding)
        if len(p) == 2:  # (left/right, top/bottom)
            p = (p[0], p[1], p[0], p[1])
        elif len(p) != 4:
            raise ValueError(f"RandomCrop: padding must have 1, 2 or 4 values, got {padding!r}")
    if min(p) < 0:
        raise ValueError(f"RandomCrop: padding must be non-negative, got {padding!r}")
    return p


class RandomCrop(Transform):
    """Zero-pad by ``padding`` then crop a ``size`` window at a uniformly random offset.

    ``size`` is an int or (h, w); ``padding`` follows torchvision: an int, (left/right,
    top/bottom) or (left, top, right, bottom). Draws the top offset, then the left one.
    """

    def __init__(self, size, padding=0):
        self.size = _pair(size, "RandomCrop size")
        if min(self.size) <= 0:
            raise ValueError(f"RandomCrop: size must be positive, got {size!r}")
        self.padding = _padding4(padding)

    def __call__(self, x, rng=None):
        x = _check_chw(x, "RandomCrop")
        rng = _require_rng(rng, "RandomCrop")
        left, top, right, bottom = self.padding
        (h, w), (H, W) = self.size, x.shape[1:]
        ph, pw = H + top + bottom, W + left + right
        if h > ph or w > pw:
            raise ValueError(f"RandomCrop: crop size {(h, w)} exceeds padded image size {(ph, pw)}")
        # Window origin in the original image's coordinates (negative inside the padding).
        r = int(rng.integers(0, ph - h + 1)) - top
        c = int(rng.integers(0, pw - w + 1)) - left
        if r >= 0 and c >= 0 and r + h <= H and c + w <= W:
            return np.ascontiguousarray(x[:, r : r + h, c : c + w])
        # Copy only the part of the window that overlaps the image; np.pad is ~10x slower.
        out = np.zeros((x.shape[0], h, w), x.dtype)
        r0, r1, c0, c1 = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
        if r0 < r1 and c0 < c1:
            out[:, r0 - r : r1 - r, c0 - c : c1 - c] = x[:, r0:r1, c0:c1]
        return out


class RandomHorizontalFlip(Transform):
    """Mirror the W axis with probability ``p`` (one uniform draw per call)."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, rng=None):
        x = _check_chw(x, "RandomHorizontalFlip")
        rng = _require_rng(rng, "RandomHorizontalFlip")
        if rng.random() < self.p:
            return np.ascontiguousarray(x[:, :, ::-1])
        return x
