"""Cross-entropy (log-softmax + NLL + label smoothing, fused) and NLL over class indices.

Logits x have shape (N, C) or (N, C, d1, ...) (or (C,) for one sample); targets t are class
indices of shape (N,) or (N, d1, ...). The class dim is moved last, so every sample is one
row of length C (row i, target t_i, class weights w, ones by default). With smoothing eps,
the row's loss weights the log-probabilities by

    a_c = (1 - eps) * w_t * [c == t] + (eps / C) * w_c,     A = sum_c a_c

    cross_entropy:  l_i = -sum_c a_c * log p_c,  p = softmax(x_i),  log p_c = x_c - lse(x_i)
    nll_loss:       l_i = -sum_c a_c * x_c        (x already log-probabilities, eps = 0)

Rows whose target equals ``ignore_index`` have l_i = 0 and weigh nothing. Reductions, as in
PyTorch: "none" gives l (target's shape), "sum" gives sum_i l_i, "mean" gives
sum_i l_i / sum_i w_{t_i} over the rows not ignored (NaN when every row is ignored).

Gradients, with s_i the incoming gradient reaching row i (gy_i for "none", gy for "sum",
gy / sum_i w_{t_i} for "mean"; 0 for ignored rows):

    cross_entropy:  gx_ic = s_i * (A * p_c - a_c)    (= s_i * (p - q) unweighted, q the
                                                      smoothed one-hot, since then A = 1)
    nll_loss:       gx_ic = -s_i * a_c

The forward row kernel computes the max-subtracted log-sum-exp, the loss and the row's
weight w_t in one pass per row and saves p for backward; a backward row kernel writes gx.
With m = max_c x_c and S = sum_c e^(x_c - m), it uses -log p_c = (m - x_c) + log S and
p_c = e^(x_c - m) / S: forming lse = m + log S first would cancel catastrophically at
|x| ~ 1e30 (float32) / 1e15 (float64), giving loss 0 instead of log 2.
No gradient flows to ``weight`` (PyTorch does not provide one either).
"""

import math

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from minicbam import device, device_errors
from minicbam.device import Kernel
from minicbam.device_errors import NONE as NO_ERROR
from minicbam.function import Function
from minicbam.kernels.block_reduce import block_argmax_device, block_threads
from minicbam.kernels.elementwise import apply_binary
from minicbam.ops.binary import div_kernel
from minicbam.ops.reduce import from_rows, rows_layout, sum_array
from minicbam.ops.reshape import reshape
from minicbam.tensor import Tensor, int64

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

REDUCTIONS = ("none", "mean", "sum")
_NONE, _MEAN, _SUM = 0, 1, 2


@register_jitable
def loss_row(loss, wt, p, x, target, weight, r, C, ignore, keep, spread, fused):
    """Row r: loss[r] = l_r, wt[r] = w_t (0 if ignored); p's row = softmax if fused."""
    t = target[r]
    base = r * C
    if t == ignore:
        loss[r] = 0
        wt[r] = 0
        return
    if t < 0 or t >= C:  # CUDA only (the CPU checks first): NaN, the error comes at a read
        loss[r] = math.nan
        wt[r] = 0
        return
    # -log p_c = (m - x_c) + log(total): lse = m + log(total) is never formed, since at
    # |x| ~ 1e30 (float32) m + log 2 rounds to m and lse - x_t would cancel to 0.
    m = x[base] - x[base]
    log_total = 0.0
    if fused:
        m = x[base]
        for c in range(1, C):
            m = max(m, x[base + c])
        total = 0.0
        for c in range(C):
            total += math.exp(x[base + c] - m)
        log_total = math.log(total)
        for c in range(C):
            p[base + c] = math.exp(x[base + c] - m) / total
    smooth = 0.0  # -sum_c w_c log p_c
    if spread != 0:
        for c in range(C):
            smooth += weight[c] * ((m - x[base + c]) + log_total)
    loss[r] = keep * weight[t] * ((m - x[base + t]) + log_total) + spread * smooth
    wt[r] = weight[t]


@register_jitable
def loss_grad_row(gx, p, target, weight, gy, denom, r, C, ignore, keep, spread, fused, mode):
    t = target[r]
    base = r * C
    if t == ignore:
        for c in range(C):
            gx[base + c] = 0
        return
    if t < 0 or t >= C:  # a bad label (CUDA only, see loss_row): NaN, never out of bounds
        for c in range(C):
            gx[base + c] = math.nan
        return
    scale = gy[r] if mode == 0 else gy[0]
    if mode == 1:
        scale = scale / denom[0]
    total_a = keep * weight[t]  # A = sum_c a_c
    for c in range(C):
        total_a += spread * weight[c]
    for c in range(C):
        a = spread * weight[c]
        if c == t:
            a += keep * weight[t]
        gx[base + c] = scale * (total_a * p[base + c] - a) if fused else -scale * a


@njit(parallel=True, cache=True)
def _loss_cpu(loss, wt, p, x, target, weight, C, ignore, keep, spread, fused):
    for r in prange(loss.size):
        loss_row(loss, wt, p, x, target, weight, r, C, ignore, keep, spread, fused)


@njit(parallel=True, cache=True)
def _loss_grad_cpu(gx, p, target, weight, gy, denom, C, ignore, keep, spread, fused, mode):
    for r in prange(target.size):
        loss_grad_row(gx, p, target, weight, gy, denom, r, C, ignore, keep, spread, fused, mode)


@device.cuda_factory
def _loss_cuda():

    @cuda.jit
    def loss_rows(loss, wt, p, x, target, weight, C, ignore, keep, spread, fused):
        for r in range(cuda.grid(1), loss.size, cuda.gridsize(1)):
            loss_row(loss, wt, p, x, target, weight, r, C, ignore, keep, spread, fused)

    return device.launcher(loss_rows)


@device.cuda_factory
def _loss_grad_cuda():

    @cuda.jit
    def loss_grad_rows(gx, p, target, weight, gy, denom, C, ignore, keep, spread, fused, mode):
        for r in range(cuda.grid(1), target.size, cuda.gridsize(1)):
            loss_grad_row(gx, p, target, weight, gy, denom, r, C, ignore, keep, spread, fused, mode)

    return device.launcher(loss_grad_rows, items=lambda gx, p, target, *rest: target.size)


@njit(cache=True)
def _check_labels_cpu(err, target, C, ignore, check):
    for i in range(target.size):
        t = target[i]
        if t != ignore and (t < 0 or t >= C):
            if err[0] == NO_ERROR:
                err[0], err[1], err[2] = check, i, t
            return


@device.cuda_factory
def _check_labels_cuda():
    T = block_threads()
    block_argmax = block_argmax_device()

    @cuda.jit
    def check_labels(err, target, C, ignore, check):
        # one block: each thread finds its first bad label (its stride runs upwards), the
        # block keeps the smallest such index (every candidate has value 0: ties -> index)
        vals = cuda.shared.array(T, np.float32)
        idxs = cuda.shared.array(T, np.int64)
        first = -1
        for i in range(cuda.threadIdx.x, target.size, T):
            t = target[i]
            if t != ignore and (t < 0 or t >= C):
                first = i
                break
        _, where = block_argmax(vals, idxs, np.float32(0), first)
        if cuda.threadIdx.x == 0 and where >= 0 and err[0] == NO_ERROR:
            err[0], err[1], err[2] = check, where, target[where]

    return device.launcher(check_labels, config=lambda *args: (1, T))


# err, int64 target, C, ignore_index, check number (minicbam/device_errors.py)
check_labels_kernel = Kernel(cpu=_check_labels_cpu, cuda=_check_labels_cuda)
# one row per sample: a batch of classification logits is far too small to split
loss_kernel = Kernel(
    cpu=_loss_cpu,
    cuda=_loss_cuda,
    float64_math=True,
    parallel_from=device.LARGE_INPUT_ELEMENTS,
)
loss_grad_kernel = Kernel(
    cpu=_loss_grad_cpu, cuda=_loss_grad_cuda, parallel_from=device.LARGE_INPUT_ELEMENTS
)


class ClassLoss(Function):
    """Cross-entropy (``fused=True``: x are logits) or NLL (``fused=False``: x are
    log-probabilities) of (N, C, ...) ``x`` against int64 ``target`` with (C,) ``weight``."""

    def __init__(self, fused, ignore_index, reduction, label_smoothing):
        self.fused, self.ignore = fused, np.int64(ignore_index)
        self.mode = {"none": _NONE, "mean": _MEAN, "sum": _SUM}[reduction]
        self.eps = label_smoothing

    def _scalars(self, dtype):
        """(C, ignore, keep = 1 - eps, spread = eps / C) in the kernels' types."""
        return (
            np.int64(self.C),
            self.ignore,
            dtype.type(1 - self.eps),
            dtype.type(self.eps / self.C),
        )

    def forward(self, x, target, weight):
        self.x_shape, self.C = x.shape, x.shape[1]
        rows, keep_shape, _ = rows_layout(x, (1,))  # (N, d1.., C): one row per sample
        dev, R = device.device_of(x), int(np.prod(keep_shape, dtype=np.int64))
        loss, wt = device.empty((R,), x.dtype, dev), device.empty((R,), x.dtype, dev)
        # nll needs no probabilities: ``loss`` stands in for p (never touched then).
        self.p = device.empty(rows.shape, x.dtype, dev) if self.fused else loss
        self.target, self.weight = device.flat(target), weight
        if R:
            loss_kernel(
                loss,
                wt,
                device.flat(self.p),
                device.flat(rows),
                self.target,
                weight,
                *self._scalars(x.dtype),
                self.fused,
            )
        return self._reduce(loss, wt, keep_shape)

    def _reduce(self, loss, wt, keep_shape):
        """l, sum_i l_i or sum_i l_i / sum_i w_{t_i}; saves that denominator for backward
        (for "none" and "sum" backward never reads ``denom``: any array of the dtype does)."""
        if self.mode == _NONE:
            self.denom = wt
            return loss.reshape(keep_shape)
        total = sum_array(loss, (0,))
        if self.mode == _SUM:
            self.denom = total
            return total
        self.denom = sum_array(wt, (0,))
        return apply_binary(div_kernel, total, self.denom)

    def backward(self, gy):
        if not self.needs_input_grad[0]:
            return None, None, None
        dev = device.device_of(gy)
        gx = device.empty((self.target.size, self.C), gy.dtype, dev)
        if gx.size:
            loss_grad_kernel(
                device.flat(gx),
                device.flat(self.p),
                self.target,
                self.weight,
                device.flat(gy),
                device.flat(self.denom),
                *self._scalars(gy.dtype),
                self.fused,
                self.mode,
            )
        return from_rows(gx, self.x_shape, (1,)), None, None


# ----------------------------------------------------------------------------- wrappers
def _check_args(op, x, target, reduction, label_smoothing):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{op}: expected floating-point input, got dtype {x.dtype}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{op}: target must be a Tensor, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(
            f"{op}: expected integer class-index targets (int64), got dtype {target.dtype}; "
            "class-probability targets are not supported"
        )
    if x.ndim == 0:
        raise ValueError(f"{op}: expected input of shape (C,), (N, C) or (N, C, d1, ...), got ()")
    expected = () if x.ndim == 1 else (x.shape[0],) + x.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"{op}: expected target of shape {expected} for input of shape {x.shape}, "
            f"got {target.shape}"
        )


def _check_labels(op, target, C, ignore_index):
    """Class indices in [0, C) or ignore_index, checked by a kernel on the labels' device.
    On the CPU a bad label raises here; on CUDA the kernel records it in the device error
    buffer and the error is raised at the next read of a device value (device_errors.py):
    checking here would copy the labels back and wait for the device every step."""

    def make_error(index, label):
        where = "" if on_cpu else " (found on the device by the label check of this call)"
        return IndexError(
            f"{op}: target {label} is out of bounds for {C} classes "
            f"(expected 0 <= target < {C} or target == ignore_index={ignore_index}){where}"
        )

    labels = device.flat(target.data)
    on_cpu = target.device == device.CPU
    if labels.size == 0:
        return
    scalars = (np.int64(C), np.int64(ignore_index))
    if on_cpu:
        err = np.full(3, NO_ERROR, dtype=np.int64)
        check_labels_kernel(err, labels, *scalars, np.int64(0))
        if err[0] != NO_ERROR:
            raise make_error(int(err[1]), int(err[2]))
        return
    check = device_errors.register(make_error)
    check_labels_kernel(device_errors.error_buffer(), labels, *scalars, np.int64(check))


def _weight_array(op, weight, x):
    C = x.shape[1]
    if weight is None:
        return Tensor(device.full((C,), 1, x.dtype, x.device))
    if weight.shape != (C,):
        raise ValueError(
            f"{op}: expected weight of shape ({C},) for {C} classes, got {weight.shape}"
        )
    return weight.detach().to(x.dtype)


def _class_loss(op, fused, x, target, weight, ignore_index, reduction, label_smoothing):
    _check_args(op, x, target, reduction, label_smoothing)
    unbatched = x.ndim == 1
    if unbatched:  # (C,) logits and a 0-d target: one sample
        x, target = reshape(x, (1, x.shape[0])), reshape(target, (1,))
    target = target.detach().to(int64)
    _check_labels(op, target, x.shape[1], ignore_index)
    fn = ClassLoss(fused, ignore_index, reduction, label_smoothing)
    y = fn(x, target, _weight_array(op, weight, x))
    return reshape(y, ()) if unbatched and reduction == "none" else y


def cross_entropy(
    input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
):
    """Cross-entropy between logits ``input`` (N, C, ...) and class indices ``target``
    (N, ...), fused with log-softmax and label smoothing (see the module docstring)."""
    return _class_loss(
        "cross_entropy",
        True,
        input,
        target,
        weight,
        ignore_index,
        reduction,
        float(label_smoothing),
    )


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` (N, C, ...) at class indices
    ``target`` (N, ...)."""
    return _class_loss("nll_loss", False, input, target, weight, ignore_index, reduction, 0.0)
