"""``DataLoader``: batches of a map-style dataset, optionally shuffled, reproducibly.

Shuffling: the order of epoch ``e`` is ``default_rng([seed, e]).permutation(len(dataset))``,
a pure function of (seed, epoch). Each ``iter(loader)`` uses the loader's current epoch and
then advances it by one; ``set_epoch(e)`` (as on PyTorch's DistributedSampler) sets the
epoch the next iteration uses, so a run resumed at epoch e sees the same batches as an
uninterrupted one. At the start of each iteration the epoch is also handed to the dataset
(``set_epoch``), which keys its per-sample augmentation on it.

Collation: ``numpy_collate`` stacks each field of the samples into one array;
``default_collate`` (the default ``collate_fn``) then converts every array with
``minicbam.tensor``, which keeps the array's dtype.

``sampler`` (e.g. a ``DistributedSampler``) replaces the shuffle: the loader hands it its
epoch (``sampler.set_epoch``) and batches the indices it yields.
"""

import numbers

import numpy as np

from minicbam.data.dataset import resolve_seed, set_epoch

__all__ = ["DataLoader", "numpy_collate", "default_collate"]


def _stack(values, field):
    arrays = [v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"collate: samples differ in shape at field {field}: {sorted(shapes)}")
    return np.stack(arrays)


def numpy_collate(samples):
    """A list of samples -> the same structure with each leaf stacked into an array.

    Samples are arrays/scalars (-> one (B, ...) array), tuples/lists of them (-> a tuple),
    or dicts (-> a dict). Python ints become int64 and floats float64, as NumPy does.
    """
    first = samples[0]
    if isinstance(first, (tuple, list)):
        sizes = {len(s) for s in samples}
        if len(sizes) != 1:
            raise ValueError(f"collate: samples have different numbers of fields: {sorted(sizes)}")
        return tuple(_stack([s[k] for s in samples], k) for k in range(len(first)))
    if isinstance(first, dict):
        return {key: _stack([s[key] for s in samples], repr(key)) for key in first}
    return _stack(samples, 0)


def _to_tensors(batch, tensor):
    if isinstance(batch, tuple):
        return tuple(tensor(a) for a in batch)
    if isinstance(batch, dict):
        return {key: tensor(a) for key, a in batch.items()}
    return tensor(batch)


def default_collate(samples):
    """``numpy_collate``, then each array -> ``minicbam.tensor`` (dtype kept)."""
    import minicbam  # at call time: the data package does not need the engine to import

    return _to_tensors(numpy_collate(samples), minicbam.tensor)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"DataLoader: {name} must be a positive int, got {value!r}")
    return int(value)


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    ``num_workers`` is accepted for PyTorch compatibility; loading always runs in the
    calling process. ``seed=None`` draws a seed at construction from minicbam's generator,
    so ``mc.manual_seed(n)`` makes the run reproducible, as ``torch.manual_seed`` does.
    """

    def __init__(
        self,
        dataset,
        batch_size=1,
        shuffle=False,
        drop_last=False,
        seed=None,
        collate_fn=None,
        num_workers=0,
        sampler=None,
    ):
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        self.sampler = sampler
        self.batch_size = _positive_int(batch_size, "batch_size")
        if len(dataset) == 0:
            raise ValueError(f"DataLoader: dataset {type(dataset).__name__} is empty")
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral):
            raise ValueError(f"DataLoader: num_workers must be an int, got {num_workers!r}")
        if num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = resolve_seed(seed, "DataLoader")
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.num_workers = int(num_workers)
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """Make the next iteration use ``epoch``'s order (and augmentation)."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(
                f"DataLoader.set_epoch: epoch must be a non-negative int, got {epoch!r}"
            )
        self.epoch = int(epoch)

    def order(self, epoch):
        """The sample indices of ``epoch``, in the order they are batched."""
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            return np.asarray(list(self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self):
        # Not a generator function: the epoch is claimed when iter() is called, not at the
        # first next(), so iter(loader) twice in a row gives two consecutive epochs.
        epoch = self.epoch
        self.epoch += 1
        set_epoch(self.dataset, epoch)
        return self._batches(self.order(epoch))

    def _batches(self, order):
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            indices = order[start : start + self.batch_size].tolist()
            yield self.collate_fn([self.dataset[i] for i in indices])
