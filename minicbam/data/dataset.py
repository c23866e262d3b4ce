"""Map-style datasets: ``Dataset``, ``TensorDataset``, ``Subset``, ``random_split`` and
``TransformedDataset``, with PyTorch's names and semantics.

Epochs and randomness: a dataset that applies random transforms has a ``set_epoch(e)``;
the ``DataLoader`` calls it at the start of every epoch (wrappers such as ``Subset``
forward it). The generator for sample ``i`` of epoch ``e`` is
``numpy.random.default_rng([seed, e, i])``, so the augmentation of a sample depends only on
(seed, epoch, index): not on batch order, shuffling or on how many samples came before.
"""

import numbers

import numpy as np

from minicbam.data.transforms import apply_transform

__all__ = [
    "Dataset",
    "TensorDataset",
    "Subset",
    "TransformedDataset",
    "EpochTransforms",
    "random_split",
    "sample_rng",
    "resolve_seed",
    "set_epoch",
]


def resolve_seed(seed, owner):
    """Validate a seed; ``None`` draws one from minicbam's generator (``mc.manual_seed``),
    as PyTorch's DataLoader draws from torch's default generator."""
    if seed is None:
        from minicbam.tensor import generator  # at call time: the engine sits above this layer

        return int(generator().integers(2**63))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{owner}: seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def sample_rng(seed, epoch, index):
    """The generator for sample ``index`` in ``epoch``: a pure function of the three ints."""
    return np.random.default_rng([seed, epoch, index])


def set_epoch(dataset, epoch):
    """Tell ``dataset`` (if it cares) which epoch is starting."""
    hook = getattr(dataset, "set_epoch", None)
    if callable(hook):
        hook(epoch)


def _check_epoch(epoch, owner):
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"{owner}.set_epoch: epoch must be a non-negative int, got {epoch!r}")
    return int(epoch)


def normalize_index(index, length, owner):
    """An int index in [-length, length) -> [0, length), else IndexError/TypeError."""
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise TypeError(f"{owner} indices must be integers, got {type(index).__name__}")
    if not -length <= index < length:
        raise IndexError(f"{owner} index {index} out of range for length {length}")
    return int(index) % length


class Dataset:
    """Abstract map-style dataset: subclasses implement ``__len__`` and ``__getitem__``."""

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")


def _as_array(value, position):
    # Tensors (minicbam or otherwise) expose .numpy(); everything else goes through asarray.
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if array.ndim == 0:
        raise ValueError(f"TensorDataset: array {position} is a scalar; expected a leading N axis")
    return array


class TensorDataset(Dataset):
    """Samples are ``tuple(a[i] for a in arrays)``; all arrays share their first dimension."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset: needs at least one array")
        self.arrays = tuple(_as_array(a, k) for k, a in enumerate(arrays))
        sizes = [len(a) for a in self.arrays]
        if len(set(sizes)) != 1:
            raise ValueError(f"TensorDataset: arrays differ in their first dimension: {sizes}")

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        index = normalize_index(index, len(self), "TensorDataset")
        return tuple(a[index] for a in self.arrays)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [normalize_index(i, len(dataset), "Subset") for i in indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[normalize_index(index, len(self), "Subset")]]

    def set_epoch(self, epoch):
        set_epoch(self.dataset, epoch)


class EpochTransforms(Dataset):
    """Base for datasets applying ``transform`` to a sample's input (first field) and
    ``target_transform`` to its target (second field), with randomness from
    ``sample_rng(seed, epoch, index)``. Subclasses call ``init_transforms`` and
    ``transform_fields``."""

    def init_transforms(self, transform, target_transform, seed):
        self.transform = transform
        self.target_transform = target_transform
        self.seed = resolve_seed(seed, type(self).__name__)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = _check_epoch(epoch, type(self).__name__)

    def transform_fields(self, index, fields):
        """``fields`` (a list, changed in place and returned) of sample ``index``."""
        if self.transform is None and self.target_transform is None:
            return fields  # no generator to build: this is the hot path
        rng = sample_rng(self.seed, self.epoch, index)
        if self.transform is not None:
            fields[0] = apply_transform(self.transform, fields[0], rng)
        if self.target_transform is not None and len(fields) > 1:
            fields[1] = apply_transform(self.target_transform, fields[1], rng)
        return fields


class TransformedDataset(EpochTransforms):
    """``dataset`` with ``transform`` applied to each sample's first field (the input) and
    ``target_transform`` to its second; a sample that is not a tuple or list is transformed
    as a whole. The generator for item i in epoch e is ``default_rng([seed, e, i])``.
    """

    def __init__(self, dataset, transform=None, target_transform=None, seed=None):
        self.dataset = dataset
        self.init_transforms(transform, target_transform, seed)

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        set_epoch(self.dataset, epoch)

    def __getitem__(self, index):
        index = normalize_index(index, len(self), "TransformedDataset")
        sample = self.dataset[index]
        if isinstance(sample, (tuple, list)):
            return tuple(self.transform_fields(index, list(sample)))
        return self.transform_fields(index, [sample])[0]


def _split_lengths(lengths, n):
    """Integer lengths summing to n, or fractions summing to 1 (PyTorch's rounding)."""
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if all(isinstance(x, numbers.Integral) for x in lengths):
        if min(lengths) < 0 or sum(lengths) != n:
            raise ValueError(f"random_split: lengths {lengths} must be >= 0 and sum to {n}")
        return [int(x) for x in lengths]
    if any(not 0 <= x <= 1 for x in lengths) or not np.isclose(sum(lengths), 1.0):
        raise ValueError(f"random_split: fractions {lengths} must be in [0, 1] and sum to 1")
    counts = [int(np.floor(n * f)) for f in lengths]
    for k in range(n - sum(counts)):  # hand the remainder out round-robin, as PyTorch does
        counts[k % len(counts)] += 1
    return counts


def random_split(dataset, lengths, seed=0):
    """Split ``dataset`` into non-overlapping ``Subset``s of the given lengths.

    The permutation is ``default_rng(seed).permutation(len(dataset))``, so a fixed seed gives
    the same split on every run.
    """
    n = len(dataset)
    counts = _split_lengths(lengths, n)
    order = np.random.default_rng(resolve_seed(seed, "random_split")).permutation(n)
    ends = np.cumsum(counts)
    return [
        Subset(dataset, order[end - k : end].tolist()) for k, end in zip(counts, ends, strict=True)
    ]
