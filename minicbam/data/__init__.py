"""Data loading: datasets, transforms and the ``DataLoader`` (PyTorch's names).

    from minicbam.data import DataLoader, MNIST, transforms
    train = MNIST("data", train=True, transform=transforms.RandomCrop(28, padding=2), seed=0)
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0)
    for x, y in loader:  # x: float32 (128, 1, 28, 28), y: int64 (128,)
        ...

Everything random (shuffling, augmentation) is a pure function of (seed, epoch, index), so
``loader.set_epoch(e)`` resumes a run exactly.
"""

from minicbam.data import transforms
from minicbam.data.dataset import (
    Dataset,
    EpochTransforms,
    Subset,
    TensorDataset,
    TransformedDataset,
    random_split,
    sample_rng,
)
from minicbam.data.datasets import (
    CIFAR10,
    MNIST,
    Digits,
    FashionMNIST,
    ImageDataset,
    load_digits,
)
from minicbam.data.formats import read_cifar_batch, read_idx
from minicbam.data.loader import DataLoader, default_collate, numpy_collate
from minicbam.data.sampler import DistributedSampler

__all__ = [
    "transforms",
    "Dataset",
    "EpochTransforms",
    "TensorDataset",
    "Subset",
    "TransformedDataset",
    "random_split",
    "sample_rng",
    "ImageDataset",
    "Digits",
    "load_digits",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "read_idx",
    "read_cifar_batch",
    "DataLoader",
    "DistributedSampler",
    "default_collate",
    "numpy_collate",
]
