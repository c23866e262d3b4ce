"""``DistributedDataParallel``: data-parallel training over the ranks of an MPI job.

Every rank holds a replica of the module and runs it on its own shard of each batch. If the
loss of rank r is the mean over its shard, L_r, the loss of the global batch (equal shards)
is L = (1/W) sum_r L_r, so its gradient is the mean of the ranks' gradients:

    dL/dtheta = (1/W) sum_r dL_r/dtheta          (W = world size)

which ``backward()`` leaves in every parameter's ``.grad`` on every rank; the replicas stay
identical because the construction broadcasts rank 0's parameters and buffers and every
rank then applies the same update.

The reduction is PyTorch's design (Li et al., "PyTorch Distributed", VLDB 2020):

- parameters are grouped, in reverse registration order (roughly the order backward
  produces their gradients), into buckets of at most ``bucket_cap_mb`` (25 MB) of one dtype;
- each parameter has a post-accumulate-grad hook (minicbam/function.py) that fires when its
  gradient is final for this backward; when every parameter of a bucket is ready, the
  bucket is flattened into one host buffer and its sum started with the non-blocking
  ``MPI_Iallreduce``, while backward goes on computing earlier layers' gradients;
- buckets start strictly in bucket order (a ready bucket waits for the ones before it), so
  every rank issues the same collectives in the same order even when ranks differ in which
  parameters they used;
- when the backward sweep ends (``queue_callback``) the buckets not yet started are started
  (a parameter this rank did not use contributes zeros; with a gradient kept from a
  ``no_sync`` step it contributes that), one more small sum counts how many ranks gave each
  parameter a gradient, and the results are unflattened into ``.grad``, divided by W. A
  parameter no rank used keeps its ``.grad`` untouched (None after ``zero_grad``).

DDP owns a duplicate of the group's communicator: SyncBatchNorm's blocking collectives run
on the group's own communicator in the middle of backward, and MPI matches collectives per
communicator, so the two streams cannot be paired wrongly.

``no_sync()``: forwards inside it skip the reduction; gradients accumulate locally and are
reduced (summed locally, then averaged over ranks) by the first backward after it.
"""

import contextlib
import time

import numpy as np

from minicbam import device
from minicbam import distributed as dist
from minicbam.function import is_grad_enabled, queue_callback
from minicbam.nn.module import Module
from minicbam.tensor import Tensor

__all__ = ["DistributedDataParallel"]


class _Bucket:
    """Parameters reduced together in one flat host buffer of one dtype."""

    def __init__(self, params):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.dtype = params[0].dtype
        self.reset()

    def reset(self):
        self.ready = 0
        self.buffer = None
        self.request = None

    def flatten(self):
        """One buffer holding every parameter's current gradient (zeros where None)."""
        buf = np.zeros(int(self.offsets[-1]), self.dtype)
        for p, lo, hi in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            if p.grad is not None:
                g = p.grad.data
                buf[lo:hi] = (g if isinstance(g, np.ndarray) else device.to_host(g)).reshape(-1)
        return buf


def _make_buckets(params, cap_bytes):
    buckets, current, size = [], [], 0
    for p in reversed(params):
        nbytes = p.numel() * p.dtype.itemsize
        if current and (size + nbytes > cap_bytes or p.dtype != current[0].dtype):
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training; call it as the module itself.

    ``broadcast_buffers`` (default True, as PyTorch): rank 0's buffers are copied to every
    rank at each training forward (BatchNorm running statistics of a model without
    SyncBatchNorm). ``device_ids``, ``output_device`` and ``find_unused_parameters`` are
    accepted for PyTorch compatibility; unused parameters are always handled.
    """

    def __init__(
        self,
        module,
        device_ids=None,
        output_device=None,
        broadcast_buffers=True,
        process_group=None,
        bucket_cap_mb=25,
        find_unused_parameters=False,
    ):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(
                f"DistributedDataParallel: expected a minicbam Module, got {type(module).__name__}"
            )
        if not bucket_cap_mb > 0:
            raise ValueError(
                f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb}"
            )
        group = process_group or dist.default_group()
        self.module = module
        object.__setattr__(self, "_comm", group.comm.Dup())
        self.world_size, self.broadcast_buffers = group.size, broadcast_buffers
        self.require_backward_grad_sync = True
        self._sync_pending = False  # set by a forward whose backward must reduce
        self._callback_queued = False
        self.last_wait_seconds = 0.0
        self._broadcast_state()
        params = [p for p in module.parameters() if p.requires_grad]
        object.__setattr__(self, "_buckets", _make_buckets(params, bucket_cap_mb * 2**20))
        object.__setattr__(self, "_bucket_of", {})
        for k, bucket in enumerate(self._buckets):
            for p in bucket.params:
                self._bucket_of[id(p)] = k
                p.register_post_accumulate_grad_hook(self._grad_ready)
        self._next_bucket = 0

    # --------------------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        if self.training and self.broadcast_buffers and self.world_size > 1:
            self._broadcast(self.module.buffers())
        if is_grad_enabled():
            self._sync_pending = self.require_backward_grad_sync
            self._start_iteration()
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes of forwards run inside skip the reduction (local accumulation)."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    # --------------------------------------------------------------- broadcasting
    def _broadcast_state(self):
        self._broadcast(self.module.parameters())
        self._broadcast(self.module.buffers())

    def _broadcast(self, tensors):
        """Rank 0's values of ``tensors``, one ``Bcast`` per dtype (coalesced, as PyTorch)."""
        by_dtype = {}
        for t in tensors:
            if t is not None and t.numel():
                by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            hosts = [
                t.data if isinstance(t.data, np.ndarray) else device.to_host(t.data) for t in group
            ]
            flat = np.concatenate([h.reshape(-1) for h in hosts])
            self._comm.Bcast(flat, root=0)
            start = 0
            for t, h in zip(group, hosts):
                h[...] = flat[start : start + h.size].reshape(h.shape)
                start += h.size
                if not isinstance(t.data, np.ndarray):
                    t.data.copy_to_device(h)

    # --------------------------------------------------------------- reduction
    def _start_iteration(self):
        for bucket in self._buckets:
            bucket.reset()
        self._next_bucket = 0
        self._callback_queued = False

    def _grad_ready(self, param):
        if not self._sync_pending:
            return
        if not self._callback_queued:
            self._callback_queued = True
            queue_callback(self._finish)
        self._buckets[self._bucket_of[id(param)]].ready += 1
        self._launch_ready()
        self._poll()

    def _launch_ready(self):
        while self._next_bucket < len(self._buckets):
            bucket = self._buckets[self._next_bucket]
            if bucket.ready < len(bucket.params):
                return
            self._launch(bucket)

    def _launch(self, bucket):
        from mpi4py import MPI

        bucket.buffer = bucket.flatten()
        bucket.request = self._comm.Iallreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM)
        self._next_bucket += 1

    def _poll(self):
        # MPICH progresses a non-blocking collective only inside MPI calls: a cheap test
        # from each hook keeps the reductions moving while backward runs.
        from mpi4py import MPI

        started = [b.request for b in self._buckets[: self._next_bucket]]
        if started:
            MPI.Request.Testall(started)

    def _finish(self):
        from mpi4py import MPI

        self._sync_pending = False
        while self._next_bucket < len(self._buckets):
            self._launch(self._buckets[self._next_bucket])
        used = np.array(
            [p.grad is not None for b in self._buckets for p in b.params], dtype=np.int32
        )
        used_request = self._comm.Iallreduce(MPI.IN_PLACE, used, op=MPI.SUM)
        start = time.perf_counter()
        MPI.Request.Waitall([b.request for b in self._buckets] + [used_request])
        # What backward could not hide: benchmarks/bench_distributed.py reports it.
        self.last_wait_seconds = time.perf_counter() - start
        k = 0
        for bucket in self._buckets:
            bucket.buffer /= self.world_size
            for p, lo, hi in zip(bucket.params, bucket.offsets[:-1], bucket.offsets[1:]):
                if used[k]:
                    _set_grad(p, bucket.buffer[lo:hi])
                k += 1
            bucket.reset()

    def extra_repr(self):
        return f"world_size={self.world_size}, buckets={len(self._buckets)}"


def _set_grad(param, flat):
    """param.grad <- ``flat`` (a slice of a bucket buffer used once) reshaped."""
    host = flat.reshape(param.shape)
    data = host if param.device == "cpu" else device.to_device(host, param.device)
    param.grad = Tensor(data)
