"""Learning-rate schedules, each a closed form of the epoch counter ``last_epoch``.

As in PyTorch, constructing a scheduler records ``initial_lr`` in every parameter group (the
base lr, ``base_lrs``) and takes one step, so ``last_epoch == 0`` and the groups hold the
epoch-0 lr; call ``scheduler.step()`` once per epoch, after ``optimizer.step()``. After ``k``
calls the lr is ``f(k)`` with, for a base lr ``b``:

    StepLR             f(e) = b * gamma^floor(e / step_size)
    CosineAnnealingLR  f(e) = eta_min + (b - eta_min) * (1 + cos(pi * e / T_max)) / 2
    LinearLR           f(e) = b * (s + (end - s) * min(e, total_iters) / total_iters)
    SequentialLR       f(e) = f_i(e - m_i) for m_i <= e < m_{i+1} (m_0 = 0), the i-th schedule

A linear warm-up followed by cosine decay over ``E`` epochs, ``W`` of them warm-up::

    warmup = LinearLR(opt, start_factor=1e-3, total_iters=W)
    cosine = CosineAnnealingLR(opt, T_max=E - W)
    scheduler = SequentialLR(opt, [warmup, cosine], milestones=[W])

Closed forms (rather than PyTorch's multiplicative updates of the current lr) make a
schedule a pure function of ``last_epoch``, so ``state_dict()`` is just the counters and
composition needs no undoing; the lrs agree with PyTorch's to rounding.
"""

import bisect
import math
from collections.abc import Mapping


class LRScheduler:
    """Base class: subclasses implement ``lr_at(epoch, base_lr)``."""

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        elif any("initial_lr" not in g for g in optimizer.param_groups):
            raise KeyError(
                "resuming a schedule (last_epoch != -1) needs 'initial_lr' in every "
                "parameter group; load the optimizer's state_dict first"
            )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, epoch, base_lr):
        raise NotImplementedError

    def get_lr(self):
        """The lrs for the current ``last_epoch``, one per parameter group."""
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def get_last_lr(self):
        """The lrs the last ``step()`` set, one per parameter group."""
        return list(self._last_lr)

    def step(self):
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def state_dict(self):
        """Everything but the optimizer (plain Python values)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restore ``state_dict()``'s values; every entry is checked first (known name, same
        kind of value, lists of the same length), so a ValueError naming the entry leaves
        the scheduler as it was."""
        self.__dict__.update(self._checked_state(state_dict))

    def _checked_state(self, state_dict, skip=("optimizer",)):
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        own = {k: v for k, v in self.__dict__.items() if k not in skip}
        unknown = sorted(str(k) for k in state_dict if k not in own)
        missing = sorted(k for k in own if k not in state_dict)
        if unknown or missing:
            raise ValueError(
                f"{owner}: the saved state does not match this scheduler "
                f"(unexpected: {unknown}, missing: {missing})"
            )
        return {k: _checked_value(owner, k, v, own[k]) for k, v in state_dict.items()}


def _checked_value(owner, key, value, current):
    """``value`` as the kind of Python value ``current`` is; ValueError naming ``key``."""
    value = (
        value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value
    )
    if isinstance(current, bool) or current is None:
        ok = isinstance(value, bool) or value is None
    elif isinstance(current, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (isinstance(current, float) or float(value).is_integer())
        ok = ok and math.isfinite(value)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(current)
        if ok:
            return type(current)(
                _checked_value(owner, f"{key}[{i}]", v, c)
                for i, (v, c) in enumerate(zip(value, current))
            )
    else:
        ok = True
    if not ok:
        raise ValueError(f"{owner}: entry {key!r} should be like {current!r}, got {value!r}")
    return type(current)(value) if isinstance(current, (int, float)) else value


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if int(step_size) != step_size or step_size <= 0:
            raise ValueError(f"step_size must be a positive integer, got {step_size}")
        self.step_size, self.gamma = int(step_size), gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from the base lr (epoch 0) down to ``eta_min`` (epoch ``T_max``); past
    ``T_max`` it climbs back, periodically, as PyTorch's does."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if T_max <= 0:
            raise ValueError(f"T_max must be positive, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        cosine = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return self.eta_min + (base_lr - self.eta_min) * cosine


class LinearLR(LRScheduler):
    """Scale the lr by a factor going linearly from ``start_factor`` (epoch 0) to
    ``end_factor`` (epoch ``total_iters`` and after): a linear warm-up when end is 1."""

    def __init__(
        self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1
    ):
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        if int(total_iters) != total_iters or total_iters <= 0:
            raise ValueError(f"total_iters must be a positive integer, got {total_iters}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch, base_lr):
        progress = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class SequentialLR(LRScheduler):
    """Run ``schedulers[i]`` from epoch ``milestones[i-1]`` on, each restarted at its epoch 0."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        schedulers, milestones = list(schedulers), [int(m) for m in milestones]
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                f"SequentialLR: expected {len(schedulers) - 1} milestones for "
                f"{len(schedulers)} schedulers, got {len(milestones)}"
            )
        if milestones != sorted(milestones) or any(m <= 0 for m in milestones):
            raise ValueError(f"milestones must be positive and increasing, got {milestones}")
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("SequentialLR: every scheduler must drive the same optimizer")
        self.schedulers, self.milestones = schedulers, milestones
        super().__init__(optimizer, last_epoch)

    def _current(self, epoch):
        i = bisect.bisect_right(self.milestones, epoch)
        return self.schedulers[i], epoch - (self.milestones[i - 1] if i else 0)

    def get_lr(self):
        scheduler, epoch = self._current(self.last_epoch)
        scheduler.last_epoch = epoch  # keeps the sub-schedule's counter meaningful
        return [scheduler.lr_at(epoch, base) for base in scheduler.base_lrs]

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedulers")}
        state["schedulers"] = [s.state_dict() for s in self.schedulers]
        return state

    def load_state_dict(self, state_dict):
        owner = "SequentialLR.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        state = dict(state_dict)
        saved = state.pop("schedulers", None)
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.schedulers):
            raise ValueError(
                f"{owner}: expected a list of {len(self.schedulers)} schedulers' states under "
                f"'schedulers', got {type(saved).__name__}"
            )
        # Check every part before changing any.
        parts = [s._checked_state(v) for s, v in zip(self.schedulers, saved)]
        own = self._checked_state(state, skip=("optimizer", "schedulers"))
        for scheduler, part in zip(self.schedulers, parts):
            scheduler.__dict__.update(part)
        self.__dict__.update(own)
