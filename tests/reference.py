"""The oracle: slow, obvious NumPy loops for every op, written from the definitions.

Every function takes and returns NumPy arrays and computes in float64 (integer results
stay integer). Loops run over ``np.ndindex`` so each formula reads as in the docstrings of
``minicbam/ops``. For pure view ops (basic indexing, broadcasting) NumPy's own semantics
*are* the definition minicbam follows, so those oracles index NumPy arrays element by element.
"""

import math

import numpy as np

# ----------------------------------------------------------------------------- elementwise
UNARY = {
    "neg": lambda x: -x,
    "exp": math.exp,
    "log": lambda x: math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan),
    "sqrt": lambda x: math.sqrt(x) if x >= 0 else math.nan,
    "abs": abs,
    "relu": lambda x: x if x > 0 else 0.0,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x)),
    "tanh": math.tanh,
}

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


def unary(name, x):
    f = UNARY[name]
    out = np.empty(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        out[i] = f(float(x[i]))
    return out


def clamp(x, lo=None, hi=None):
    out = np.empty(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        v = float(x[i])
        if lo is not None and v < lo:
            v = lo
        if hi is not None and v > hi:
            v = hi
        out[i] = v
    return out


def power(x, p):
    out = np.empty(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):
        out[i] = float(x[i]) ** p
    return out


def broadcast_shape(*shapes):
    """NumPy's rule, spelled out: align right, sizes must agree or be 1."""
    ndim = max(len(s) for s in shapes)
    out = []
    for k in range(ndim):
        sizes = {s[k - ndim + len(s)] for s in shapes if k - ndim + len(s) >= 0} - {1}
        assert len(sizes) <= 1, f"shapes {shapes} do not broadcast"
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def source_index(i, shape):
    """Index into an array of ``shape`` that broadcasting maps output index ``i`` to."""
    lead = len(i) - len(shape)
    return tuple(0 if s == 1 else i[lead + k] for k, s in enumerate(shape))


def binary(name, a, b):
    f = BINARY[name]
    shape = broadcast_shape(a.shape, b.shape)
    out = np.empty(shape, dtype=np.float64)
    for i in np.ndindex(shape):
        out[i] = f(float(a[source_index(i, a.shape)]), float(b[source_index(i, b.shape)]))
    return out


def broadcast_to(x, shape):
    out = np.empty(shape, dtype=x.dtype)
    for i in np.ndindex(shape):
        out[i] = x[source_index(i, x.shape)]
    return out


# ----------------------------------------------------------------------------- reductions
def _dims(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted(d % ndim for d in dims))


def _groups(x, dim, keepdim):
    """Yield (output index, list of the input elements reduced into it) and the out shape."""
    dims = _dims(dim, x.ndim)
    kept = [k for k in range(x.ndim) if k not in dims]
    shape = (
        tuple(1 if k in dims else x.shape[k] for k in range(x.ndim))
        if keepdim
        else tuple(x.shape[k] for k in kept)
    )
    groups = {}
    for i in np.ndindex(x.shape):
        key = (
            tuple(0 if k in dims else i[k] for k in range(x.ndim))
            if keepdim
            else tuple(i[k] for k in kept)
        )
        groups.setdefault(key, []).append(float(x[i]))
    return shape, groups


def reduce_sum(x, dim=None, keepdim=False):
    shape, groups = _groups(x, dim, keepdim)
    out = np.zeros(shape)
    for key, values in groups.items():
        out[key] = math.fsum(values)
    return out


def reduce_mean(x, dim=None, keepdim=False):
    shape, groups = _groups(x, dim, keepdim)
    out = np.zeros(shape)
    for key, values in groups.items():
        out[key] = math.fsum(values) / len(values)
    return out


def reduce_var(x, dim=None, keepdim=False, correction=1):
    shape, groups = _groups(x, dim, keepdim)
    out = np.zeros(shape)
    for key, values in groups.items():
        m = math.fsum(values) / len(values)
        denom = len(values) - correction
        ss = math.fsum((v - m) ** 2 for v in values)
        if denom > 0:
            out[key] = ss / denom
        else:  # PyTorch divides by max(0, denom): inf, or NaN for a zero sum of squares
            out[key] = math.inf if ss > 0 else math.nan
    return out


def reduce_amax(x, dim=None, keepdim=False):
    shape, groups = _groups(x, dim, keepdim)
    out = np.zeros(shape)
    for key, values in groups.items():
        out[key] = max(values)
    return out


def max_with_index(x, dim, keepdim=False):
    """(values, indices) along one ``dim``; the index of the FIRST maximum."""
    shape, groups = _groups(x, dim, keepdim)
    values, indices = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    for key, row in groups.items():
        best = 0
        for k, v in enumerate(row):
            if v > row[best]:
                best = k
        values[key], indices[key] = row[best], best
    return values, indices


# ----------------------------------------------------------------------------- views
def permute(x, dims):
    shape = tuple(x.shape[d] for d in dims)
    out = np.empty(shape, dtype=x.dtype)
    for i in np.ndindex(shape):
        src = [0] * x.ndim
        for k, d in enumerate(dims):
            src[d] = i[k]
        out[i] = x[tuple(src)]
    return out


def getitem(x, index):
    """Basic indexing, element by element: NumPy's indexing of each output position."""
    view = x[index]  # only its shape and which source element each position reads
    flat_positions = np.arange(x.size).reshape(x.shape)[index]
    out = np.empty(view.shape, dtype=x.dtype)
    for i in np.ndindex(view.shape):
        out[i] = x.flat[flat_positions[i]]
    return out


def cat(arrays, dim=0):
    dim %= arrays[0].ndim
    shape = list(arrays[0].shape)
    shape[dim] = sum(a.shape[dim] for a in arrays)
    out = np.empty(shape, dtype=arrays[0].dtype)
    start = 0
    for a in arrays:
        for i in np.ndindex(a.shape):
            j = list(i)
            j[dim] += start
            out[tuple(j)] = a[i]
        start += a.shape[dim]
    return out


def stack(arrays, dim=0):
    dim %= arrays[0].ndim + 1
    return cat([a.reshape(a.shape[:dim] + (1,) + a.shape[dim:]) for a in arrays], dim)


# ----------------------------------------------------------------------------- softmax
def _rows(x, dim):
    """Yield the index tuples of each 1-D line of ``x`` along ``dim``."""
    dim %= x.ndim
    other = tuple(s for k, s in enumerate(x.shape) if k != dim)
    for i in np.ndindex(other):
        yield [i[:dim] + (k,) + i[dim:] for k in range(x.shape[dim])]


def softmax(x, dim):
    out = np.empty(x.shape)
    for line in _rows(x, dim):
        values = [float(x[j]) for j in line]
        m = max(values)
        total = math.fsum(math.exp(v - m) for v in values)
        for j, v in zip(line, values):
            out[j] = math.exp(v - m) / total
    return out


def log_softmax(x, dim):
    out = np.empty(x.shape)
    for line in _rows(x, dim):
        values = [float(x[j]) for j in line]
        m = max(values)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in values))
        for j, v in zip(line, values):
            out[j] = v - lse
    return out


# ----------------------------------------------------------------------------- losses
def _reduce(losses, denominator, reduction):
    if reduction == "none":
        return losses
    total = math.fsum(losses.ravel())
    if reduction == "sum":
        return np.float64(total)
    return np.float64(total / denominator) if denominator else np.float64(math.nan)


def nll_loss(logp, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """PyTorch's NLL (and, with label_smoothing, its smoothed cross-entropy term) on
    log-probabilities ``logp`` of shape (N, C, d...) or (C,)."""
    if logp.ndim == 1:
        out = nll_loss(
            logp[None],
            np.asarray(target).reshape(1),
            weight,
            ignore_index,
            reduction,
            label_smoothing,
        )
        return out.reshape(()) if reduction == "none" else out
    C = logp.shape[1]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    losses = np.zeros(target.shape)
    denominator = 0.0
    for i in np.ndindex(target.shape):
        t = int(target[i])
        if t == ignore_index:
            continue
        row = [float(logp[(i[0], c) + i[1:]]) for c in range(C)]
        nll = -w[t] * row[t]
        smooth = -math.fsum(w[c] * row[c] for c in range(C)) / C
        losses[i] = (1 - label_smoothing) * nll + label_smoothing * smooth
        denominator += w[t]
    return _reduce(losses, denominator, reduction)


def cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    return nll_loss(
        log_softmax(x, 0 if x.ndim == 1 else 1),
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
    )


def _elementwise_loss(f, x, t, reduction):
    shape = broadcast_shape(x.shape, t.shape)
    losses = np.empty(shape)
    for i in np.ndindex(shape):
        losses[i] = f(float(x[source_index(i, x.shape)]), float(t[source_index(i, t.shape)]))
    return _reduce(losses, losses.size, reduction)


def mse_loss(x, t, reduction="mean"):
    return _elementwise_loss(lambda a, b: (a - b) ** 2, x, t, reduction)


def l1_loss(x, t, reduction="mean"):
    return _elementwise_loss(lambda a, b: abs(a - b), x, t, reduction)


def softplus(x, beta=1.0, threshold=20.0):
    out = np.empty(x.shape)
    for i in np.ndindex(x.shape):
        v = float(x[i])
        out[i] = v if beta * v > threshold else math.log1p(math.exp(beta * v)) / beta
    return out


def binary_cross_entropy_with_logits(x, t, weight=None, reduction="mean", pos_weight=None):
    """-w [pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))], via log-sigmoid in float64."""

    def log_sigmoid(v):
        return -math.log1p(math.exp(-v)) if v >= 0 else v - math.log1p(math.exp(v))

    losses = np.empty(x.shape)
    for i in np.ndindex(x.shape):
        v, y = float(x[i]), float(t[i])
        pw = 1.0 if pos_weight is None else float(np.broadcast_to(pos_weight, x.shape)[i])
        w = 1.0 if weight is None else float(np.broadcast_to(weight, x.shape)[i])
        losses[i] = -w * (pw * y * log_sigmoid(v) + (1 - y) * log_sigmoid(-v))
    return _reduce(losses, losses.size, reduction)


def binary_cross_entropy(p, t, weight=None, reduction="mean"):
    losses = np.empty(p.shape)
    for i in np.ndindex(p.shape):
        v, y = float(p[i]), float(t[i])
        log_p = max(math.log(v), -100.0) if v > 0 else -100.0
        log_q = max(math.log(1 - v), -100.0) if v < 1 else -100.0
        w = 1.0 if weight is None else float(np.broadcast_to(weight, p.shape)[i])
        losses[i] = -w * (y * log_p + (1 - y) * log_q)
    return _reduce(losses, losses.size, reduction)


def dropout_expected(x, mask, p):
    """y given the keep-mask m: x * m / (1 - p) (0 where p = 1)."""
    out = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        if mask[i] and p < 1:
            out[i] = float(x[i]) / (1 - p)
    return out
