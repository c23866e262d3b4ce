"""Image classification datasets read from local files; nothing is ever downloaded.

- ``load_digits`` / ``Digits``: scikit-learn's bundled 8x8 handwritten digits, with a fixed
  stratified train/test split.
- ``MNIST``, ``FashionMNIST``: the IDX files (``train-images-idx3-ubyte[.gz]``, ...).
- ``CIFAR10``: the binary version (``data_batch_1.bin`` .. ``data_batch_5.bin``,
  ``test_batch.bin``).

Every sample is ``(image, label)``: a float32 (C, H, W) image in [0, 1] and an int64 label.
Pixels stay stored as uint8 (``.data``, (N, C, H, W)); a sample is scaled when it is read.
``transform`` / ``target_transform`` are applied per sample with the generator
``sample_rng(seed, epoch, index)`` (see ``minicbam.data.dataset``).
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np

from minicbam.data.dataset import EpochTransforms, normalize_index
from minicbam.data.formats import find_files, read_cifar_batch, read_idx

__all__ = ["ImageDataset", "Digits", "load_digits", "MNIST", "FashionMNIST", "CIFAR10"]


class ImageDataset(EpochTransforms):
    """uint8 images (N, C, H, W) and labels (N,); samples scaled to float32 by ``1/pixel_max``."""

    classes = ()

    def __init__(
        self, images, labels, pixel_max=255, transform=None, target_transform=None, seed=None
    ):
        self.data = np.ascontiguousarray(images, dtype=np.uint8)
        self.targets = np.asarray(labels, dtype=np.int64)
        if self.data.ndim != 4 or len(self.data) != len(self.targets):
            raise ValueError(
                f"{type(self).__name__}: expected images (N, C, H, W) and labels (N,), "
                f"got {self.data.shape} and {self.targets.shape}"
            )
        self.pixel_max = np.float32(pixel_max)
        self.init_transforms(transform, target_transform, seed)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        index = normalize_index(index, len(self), type(self).__name__)
        x = self.data[index].astype(np.float32) / self.pixel_max
        return tuple(self.transform_fields(index, [x, self.targets[index]]))


def _check_labels(owner, labels, num_classes, source):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{owner}: {source}: labels must be in [0, {num_classes}), "
            f"got values in [{labels.min()}, {labels.max()}]"
        )


def _no_download(owner, download):
    if download:
        raise ValueError(
            f"{owner}: minicbam never downloads; place the files in root and pass download=False"
        )


# ---------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    """(images (1797, 1, 8, 8) uint8, labels (1797,) int64), read-only, from the CSV that
    scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixel counts 0..16 and
    the label per row), read directly: ``import sklearn.datasets`` took ~2 s of a 10 s
    ``minicbam train``. scikit-learn's own loader is the fallback if the file moves."""
    rows = _bundled_digits_csv()
    if rows is None:
        try:
            from sklearn.datasets import load_digits as sk_load_digits
        except ImportError as e:
            raise ImportError(
                "minicbam.data.load_digits needs scikit-learn (pip install scikit-learn)"
            ) from e
        bunch = sk_load_digits()
        rows = np.column_stack([bunch.data, bunch.target])
    # Pixels are integer counts 0..16; (N, 64) -> (N, 1, 8, 8).
    images = rows[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = rows[:, 64].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every Digits
    return images, labels


def _bundled_digits_csv():
    """scikit-learn's digits.csv.gz as a (1797, 65) float array, or None when not found."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    rows = np.loadtxt(path, delimiter=",")
    return rows if rows.shape == (1797, 65) else None


def stratified_split(labels, test_fraction, seed):
    """(train, test) index arrays, sorted; each class keeps ~test_fraction of its samples
    in test (rounded), chosen by ``default_rng(seed)`` class by class in label order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(len(members) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


class Digits(ImageDataset):
    """scikit-learn's 1,797 8x8 digits as (1, 8, 8) float32 in [0, 1] (pixel / 16).

    ``split`` is "train" or "test"; the split is stratified by class and fixed by
    ``split_seed``, so the two never overlap. ``seed`` keys the random transforms.
    """

    classes = tuple(str(d) for d in range(10))

    def __init__(
        self,
        split="train",
        test_fraction=0.2,
        split_seed=0,
        transform=None,
        target_transform=None,
        seed=None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"Digits: split must be 'train' or 'test', got {split!r}")
        images, labels = _sklearn_digits()
        train, test = stratified_split(labels, test_fraction, split_seed)
        rows = train if split == "train" else test
        super().__init__(images[rows], labels[rows], 16, transform, target_transform, seed)
        self.split = split
        self.indices = rows  # positions in sklearn's array, for provenance


def load_digits(split="train", test_fraction=0.2, seed=0):
    """The ``split`` part of the digits dataset; ``seed`` fixes the held-out split.

    For augmentation use ``Digits(split, ..., transform=..., seed=...)``.
    """
    return Digits(split, test_fraction, split_seed=seed)


# ----------------------------------------------------------------------------- MNIST


class MNIST(ImageDataset):
    """MNIST from IDX files in ``root`` (or ``root/MNIST/raw`` as torchvision lays it out)."""

    classes = (
        "0 - zero",
        "1 - one",
        "2 - two",
        "3 - three",
        "4 - four",
        "5 - five",
        "6 - six",
        "7 - seven",
        "8 - eight",
        "9 - nine",
    )

    def __init__(
        self, root, train=True, transform=None, target_transform=None, download=False, seed=None
    ):
        owner = type(self).__name__
        _no_download(owner, download)
        self.root, self.train = Path(root), bool(train)
        prefix = "train" if self.train else "t10k"
        names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
        dirs = [self.root, self.root / owner / "raw", self.root / owner]
        image_path, label_path = find_files(owner, names, dirs)
        images = read_idx(image_path, ndim=3)
        labels = read_idx(label_path, ndim=1)
        for path, array in ((image_path, images), (label_path, labels)):
            if array.dtype != np.uint8:
                raise ValueError(f"{path}: expected uint8 (type byte 0x08), got {array.dtype}")
        if len(images) != len(labels):
            raise ValueError(
                f"{owner}: {image_path.name} holds {len(images)} images but "
                f"{label_path.name} holds {len(labels)} labels"
            )
        _check_labels(owner, labels, len(self.classes), label_path)
        # (N, H, W) -> (N, 1, H, W)
        super().__init__(images[:, None], labels, 255, transform, target_transform, seed)


class FashionMNIST(MNIST):
    """Fashion-MNIST: MNIST's file names and format, in ``root`` or ``root/FashionMNIST/raw``."""

    classes = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


# --------------------------------------------------------------------------- CIFAR-10


class CIFAR10(ImageDataset):
    """CIFAR-10 binary batches in ``root`` or ``root/cifar-10-batches-bin``; images (3, 32, 32)."""

    classes = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )

    def __init__(
        self, root, train=True, transform=None, target_transform=None, download=False, seed=None
    ):
        _no_download("CIFAR10", download)
        self.root, self.train = Path(root), bool(train)
        names = [f"data_batch_{k}.bin" for k in range(1, 6)] if self.train else ["test_batch.bin"]
        paths = find_files("CIFAR10", names, [self.root, self.root / "cifar-10-batches-bin"])
        images, labels = [], []
        for path in paths:
            x, y = read_cifar_batch(path)
            _check_labels("CIFAR10", y, len(self.classes), path)
            images.append(x)
            labels.append(y)
        super().__init__(
            np.concatenate(images), np.concatenate(labels), 255, transform, target_transform, seed
        )
