"""Batch normalisation with statistics over the global batch of an MPI job (training only;
evaluation uses the running statistics, as ``batch_norm`` does, with no communication).

Rank r holds x_r of shape (N_r, C, *): per channel c, K_r = N_r M elements
(M = prod(spatial)). With W ranks and K = sum_r K_r, the forward pass is ``batch_norm``'s
with the statistics of the union of the ranks' elements:

    mu = sum_r sum x_r / K,    var = sum_r sum (x_r - mu)^2 / K,    invstd = 1/sqrt(var + eps)
    y_r = w (x_r - mu) invstd + b
    running_mean <- (1 - f) running_mean + f mu,  running_var <- (1 - f) running_var + f var K/(K-1)

Each rank computes its planes' (mean, M2) with ``batch_norm``'s kernels, combines them into
(K_r, mu_r, M2_r) per channel and one ``Allgather`` of 2C + 1 numbers gives every rank the
exact combination (Chan et al.; no E[x^2] - mu^2 cancellation):

    mu = sum_r K_r mu_r / K,    M2 = sum_r M2_r + sum_r K_r (mu_r - mu)^2,    var = M2 / K

Gradient. Let L = sum_r L_r with gy_r = dL_r/dy_r the gradient rank r's backward receives
(each rank backpropagates its own loss). y_s depends on x_r through mu and invstd, and

    dy_s,j / dx_r,i = w invstd (delta_rs delta_ij - 1/K - xhat_s,j xhat_r,i / K)

so dL/dx_r needs two sums over the *global* batch, one ``Allreduce`` of 2C numbers:

    SG = sum_s sum gy_s,   SGX = sum_s sum gy_s (x_s - mu)
    gx_r = w invstd (gy_r - SG/K - (x_r - mu) invstd^2 SGX/K)

while w and b only act on this rank's outputs: gw_r = invstd sum gy_r (x_r - mu) and
gb_r = sum gy_r are the *local* sums. With DistributedDataParallel each rank's loss is its
shard mean and the parameter gradients are averaged over the ranks; the averaged result is
the gradient of the global-batch mean loss (docs/distributed.md), as one process on the
whole batch computes it.

``group`` is any object with ``size``, ``allgather_array`` and ``allreduce_array`` on host
arrays (a ``minicbam.distributed`` group); ``SINGLE_PROCESS`` is the group of one rank, with
which the op is exactly ``batch_norm`` in training mode (what the gradient tests check).
"""

import numpy as np

from minicbam import device
from minicbam.function import Function, check_same_device
from minicbam.ops.batch_norm import (
    _check_channels,
    affine_kernel,
    input_grad_kernel,
    plane_grad_kernel,
    plane_stats_kernel,
)

__all__ = ["SINGLE_PROCESS", "sync_batch_norm"]


class _SingleProcess:
    """The group of one rank: gathering and reducing are copies."""

    size = 1

    def allgather_array(self, array):
        return np.array(array)[None]

    def allreduce_array(self, array):
        return np.array(array)


SINGLE_PROCESS = _SingleProcess()


def _host(array):
    return array if isinstance(array, np.ndarray) else device.to_host(array)


def _rank_stats(pstats, N, C, M):
    """(K_r, mu_r (C,), M2_r (C,)) of this rank from its planes' (mean, M2), (2, N*C)."""
    if N * M == 0:
        return 0, np.zeros(C), np.zeros(C)
    pmean, pm2 = pstats.reshape(2, N, C)
    mean = pmean.sum(axis=0) / N  # every plane holds M elements: the mean of the means
    m2 = pm2.sum(axis=0) + M * ((pmean - mean) ** 2).sum(axis=0)
    return N * M, mean, m2


def _global_stats(group, K, mean, m2):
    """Combine every rank's (K_r, mu_r, M2_r) into the global (K, mu, M2)."""
    C = mean.size
    parts = group.allgather_array(np.concatenate([[float(K)], mean, m2]))
    counts, means, m2s = parts[:, 0], parts[:, 1 : C + 1], parts[:, C + 1 :]
    total = counts.sum()
    if total <= 1:
        raise ValueError(
            f"sync_batch_norm: Expected more than 1 value per channel when training, got "
            f"{int(total)} over the {group.size} ranks"
        )
    mu = (counts[:, None] * means).sum(axis=0) / total
    m2_all = m2s.sum(axis=0) + (counts[:, None] * (means - mu) ** 2).sum(axis=0)
    return total, mu, m2_all


def _update_running(array, value, momentum):
    """array <- (1 - momentum) array + momentum value, in place, on the array's device."""
    new = ((1.0 - momentum) * _host(array).astype(np.float64) + momentum * value).astype(
        array.dtype
    )
    if isinstance(array, np.ndarray):
        array[...] = new
    else:
        array.copy_to_device(new)


class SyncBatchNorm(Function):
    def __init__(self, running_mean, running_var, momentum, eps, has_w, has_b, group):
        self.rmean, self.rvar = running_mean, running_var  # arrays updated in place, or None
        self.momentum, self.eps, self.group = momentum, eps, group
        self.has_w, self.has_b = has_w, has_b

    def _params(self, x, wb):
        """(w, b) as float64 host arrays: ones and zeros where not given."""
        C = x.shape[1]
        wb = list(wb)
        w = _host(wb.pop(0)).reshape(C) if self.has_w else np.ones(C, x.dtype)
        b = _host(wb.pop(0)).reshape(C) if self.has_b else np.zeros(C, x.dtype)
        return w.astype(np.float64), b.astype(np.float64)

    def forward(self, x, *wb):
        N, C = x.shape[:2]
        M = x.size // (N * C) if x.size else 0
        dev, flat = device.device_of(x), device.flat
        w, b = self._params(x, wb)
        self.x, self.M, self.w = x, M, w
        self.w_shape = wb[0].shape if self.has_w else None
        self.b_shape = wb[-1].shape if self.has_b else None
        pstats = device.empty((2, N * C), np.float64, dev)
        if x.size:
            plane_stats_kernel(flat(pstats), flat(x), M)
        K, mean, m2 = _global_stats(self.group, *_rank_stats(_host(pstats), N, C, M))
        invstd = 1.0 / np.sqrt(m2 / K + self.eps)
        if self.rmean is not None:
            _update_running(self.rmean, mean, self.momentum)
            _update_running(self.rvar, m2 / (K - 1), self.momentum)
        self.K, self.invstd = K, invstd
        self.stats = device.to_device(np.stack([mean, invstd]), dev)  # (2, C) float64
        scale = w * invstd
        affine = np.stack([scale, b - mean * scale]).astype(x.dtype)  # (scale, shift)
        y = device.empty(x.shape, x.dtype, dev)
        if x.size:
            affine_kernel(flat(y), flat(x), flat(device.to_device(affine, dev)), C, M)
        return y

    def backward(self, gy):
        x, M, flat = self.x, self.M, device.flat
        N, C = x.shape[:2]
        dev = device.device_of(gy)
        psums = device.zeros((2, N * C), np.float64, dev)
        if x.size:
            plane_grad_kernel(flat(psums), flat(gy), flat(x), flat(self.stats), C, M)
        local = _host(psums).reshape(2, N, C).sum(axis=1)  # (sum gy, sum gy (x - mu)) per c
        sg, sgx = self.group.allreduce_array(local.reshape(-1)).reshape(2, C)
        mean, invstd, K = _host(self.stats)[0], self.invstd, self.K
        coef = np.stack([self.w * invstd, sg / K, invstd * invstd * sgx / K, mean])
        gx = device.empty(x.shape, gy.dtype, dev)
        if x.size:
            coef_dev = device.to_device(coef.astype(gy.dtype), dev)
            input_grad_kernel(flat(gx), flat(gy), flat(x), flat(coef_dev), C, M)
        grads = [gx if self.needs_input_grad[0] else None]
        if self.has_w:
            gw = (local[1] * invstd).astype(gy.dtype).reshape(self.w_shape)
            grads.append(device.to_device(gw, dev))
        if self.has_b:
            grads.append(device.to_device(local[0].astype(gy.dtype).reshape(self.b_shape), dev))
        return tuple(grads)


def _check_args(x, running_mean, running_var, weight, bias):
    if x.ndim < 2:
        raise ValueError(
            f"sync_batch_norm: expected an input of 2 or more dimensions (N, C, ...), got "
            f"shape {tuple(x.shape)}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"sync_batch_norm: expected a floating-point input, got dtype {x.dtype}")
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_channels(name, t, C, x.shape)
    for name, t in (("weight", weight), ("bias", bias)):
        _check_channels(name, t, C, x.shape)
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"sync_batch_norm: {name} has dtype {t.dtype}, expected the input's {x.dtype}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("sync_batch_norm: give both running_mean and running_var, or neither")


def sync_batch_norm(
    input, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5, group=None
):
    """Training-mode batch norm with the statistics of the batch of every rank of ``group``
    (a ``minicbam.distributed`` group; ``SINGLE_PROCESS`` or None: this process only).
    running_mean and running_var (tensors or None) are updated in place, identically on
    every rank."""
    x = input
    _check_args(x, running_mean, running_var, weight, bias)
    check_same_device(
        "sync_batch_norm",
        [t for t in (x, running_mean, running_var, weight, bias) if t is not None],
    )
    fn = SyncBatchNorm(
        None if running_mean is None else running_mean.data,
        None if running_var is None else running_var.data,
        float(momentum),
        float(eps),
        weight is not None,
        bias is not None,
        SINGLE_PROCESS if group is None else group,
    )
    return fn(*(t for t in (x, weight, bias) if t is not None))
