"""``DistributedSampler``: the share of one rank in every epoch, as PyTorch's.

With n samples and R replicas, epoch e's order is ``default_rng([seed, e]).permutation(n)``
(the DataLoader's own shuffle, so one process and R processes see the same global order)
or ``arange(n)`` without shuffling. Then, with S = ceil(n / R) samples per rank:

- ``drop_last=False``: the order is padded by repeating its start to R S indices, so a few
  samples appear twice in the epoch when R does not divide n;
- ``drop_last=True``: it is cut to R floor(n / R) indices, S = floor(n / R), every sample
  at most once;

and rank r takes every R-th index from r: ``order[r::R]``. Batch b of rank r (size B/R)
then holds global positions b B + r, b B + r + R, ...: the union over the ranks of their
batch b is exactly batch b of one process with batch size B (when R divides B), which is
what makes a run independent of the number of processes.
"""

import numbers

import numpy as np

__all__ = ["DistributedSampler"]


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"DistributedSampler: {name} must be an int >= {low}, got {value!r}")
    return int(value)


class DistributedSampler:
    def __init__(
        self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False
    ):
        if num_replicas is None or rank is None:
            from minicbam import distributed as dist

            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        self.num_replicas = _check_int(num_replicas, "num_replicas", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"DistributedSampler: rank must be in [0, {self.num_replicas - 1}], got {rank}"
            )
        self.dataset, self.shuffle, self.drop_last = dataset, bool(shuffle), bool(drop_last)
        self.seed = _check_int(seed, "seed", 0)
        self.epoch = 0
        n, R = len(dataset), self.num_replicas
        self.num_samples = n // R if self.drop_last else -(-n // R)
        self.total_size = self.num_samples * R

    def set_epoch(self, epoch):
        """Make the next iteration use ``epoch``'s order (call it at every epoch)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def order(self):
        """This rank's indices of the current epoch, an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:  # pad by repeating the start (as often as needed)
            order = np.resize(order, self.total_size)
        order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self):
        return self.num_samples
