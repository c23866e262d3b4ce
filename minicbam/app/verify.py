"""Gradient verification of every functional op and attention module (``minicbam gradcheck``).

Each case builds a function and float64 inputs of small fixed shapes with fixed values, then
compares the analytic gradient (one backward of ``<v, fn(x)>`` for a fixed random cotangent v)
with central finite differences, element by element, exactly as ``mc.gradcheck`` does (it
uses that module's own routines, with its default eps, atol and rtol). A case passes when
every element satisfies ``|numeric - analytic| <= atol + rtol * |numeric|``.

Inputs avoid the points where an op is not differentiable: ReLU inputs stay at least 0.1 from
0 and the inputs of max-type ops (max-pool, channel/global max) are distinct multiples of 0.1
plus small noise, so a 1e-6 step never changes which element is the maximum.

    from minicbam.app.verify import run_all
    rows = run_all(only=["conv2d", "CBAM"])   # [Row(name, params, max_abs_error, status, ...)]
"""

import dataclasses

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn
from minicbam.gradcheck import gradient_errors
from minicbam.tensor import generator

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3  # mc.gradcheck's defaults


@dataclasses.dataclass
class Row:
    name: str
    params: str
    max_abs_error: float
    status: str  # "ok", "FAIL" or "ERROR"
    detail: str = ""


# ----------------------------------------------------------------------------- inputs


def smooth(shape, rng):
    """Normal float64 values, requires_grad."""
    return mc.tensor(rng.standard_normal(shape), dtype=mc.float64, requires_grad=True)


def away_from_zero(shape, rng):
    """Values with |x| >= 0.1 (ReLU's kink stays out of reach)."""
    x = rng.standard_normal(shape)
    x = np.sign(x) * (0.1 + np.abs(x))
    return mc.tensor(x, dtype=mc.float64, requires_grad=True)


def distinct(shape, rng):
    """Distinct values 0.1 apart, shuffled (no ties for max-type ops)."""
    n = int(np.prod(shape))
    x = (rng.permutation(n) - n / 2) * 0.1 + rng.uniform(-0.01, 0.01, n)
    return mc.tensor(x.reshape(shape), dtype=mc.float64, requires_grad=True)


def labels(n, classes, rng):
    return mc.tensor(rng.integers(0, classes, n).astype(np.int64))


# ------------------------------------------------------------------------------ cases


def _conv_cases():
    settings = [
        {"stride": 1, "padding": 0},
        {"stride": 2, "padding": 1},
        {"stride": 1, "padding": 2, "dilation": 2},
        {"stride": 1, "padding": 1, "groups": 2},
    ]
    for s in settings:
        groups = s.get("groups", 1)

        def build(rng, s=s, groups=groups):
            x, w = smooth((2, 4, 5, 5), rng), smooth((3 * groups, 4 // groups, 3, 3), rng)
            b = smooth((3 * groups,), rng)
            return (lambda x, w, b: F.conv2d(x, w, b, **s)), (x, w, b)

        yield "conv2d", "x(2,4,5,5) w(3,4,3,3) " + _kw(s), build


def _linear_cases():
    def build(rng):
        x, w, b = smooth((3, 5), rng), smooth((4, 5), rng), smooth((4,), rng)
        return F.linear, (x, w, b)

    yield "linear", "x(3,5) w(4,5) b(4)", build


def _batch_norm_cases():
    for training in (True, False):

        def build(rng, training=training):
            x, w, b = smooth((4, 3, 2, 2), rng), smooth((3,), rng), smooth((3,), rng)
            mean = mc.tensor(rng.standard_normal(3), dtype=mc.float64)
            var = mc.tensor(rng.uniform(0.5, 2.0, 3), dtype=mc.float64)
            return (lambda x, w, b: F.batch_norm(x, mean, var, w, b, training=training)), (x, w, b)

        yield "batch_norm", f"x(4,3,2,2) training={training}", build


def _pool_cases():
    for kw in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}):
        yield (
            "max_pool2d",
            "x(2,3,6,6) " + _kw(kw),
            _unary(distinct, (2, 3, 6, 6), lambda x, kw=kw: F.max_pool2d(x, **kw)),
        )
    for kw in (
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    ):
        yield (
            "avg_pool2d",
            "x(2,3,6,6) " + _kw(kw),
            _unary(smooth, (2, 3, 6, 6), lambda x, kw=kw: F.avg_pool2d(x, **kw)),
        )
    for size in (1, 2, 3):
        yield (
            "adaptive_avg_pool2d",
            f"x(2,3,5,5) output_size={size}",
            _unary(smooth, (2, 3, 5, 5), lambda x, s=size: F.adaptive_avg_pool2d(x, s)),
        )
        yield (
            "adaptive_max_pool2d",
            f"x(2,3,5,5) output_size={size}",
            _unary(distinct, (2, 3, 5, 5), lambda x, s=size: F.adaptive_max_pool2d(x, s)),
        )


def _activation_cases():
    yield "relu", "x(3,4)", _unary(away_from_zero, (3, 4), F.relu)
    yield "sigmoid", "x(3,4)", _unary(smooth, (3, 4), F.sigmoid)
    yield "tanh", "x(3,4)", _unary(smooth, (3, 4), F.tanh)
    for dim in (1, -1):
        yield (
            "softmax",
            f"x(2,3,4) dim={dim}",
            _unary(smooth, (2, 3, 4), lambda x, d=dim: F.softmax(x, d)),
        )
        yield (
            "log_softmax",
            f"x(2,3,4) dim={dim}",
            _unary(smooth, (2, 3, 4), lambda x, d=dim: F.log_softmax(x, d)),
        )


def _loss_cases():
    for reduction in ("mean", "sum", "none"):
        for smoothing in (0.0, 0.1):

            def build(rng, r=reduction, s=smoothing):
                x, t = smooth((4, 5), rng), labels(4, 5, rng)
                return (lambda x: F.cross_entropy(x, t, reduction=r, label_smoothing=s)), (x,)

            yield (
                "cross_entropy",
                f"x(4,5) reduction={reduction} label_smoothing={smoothing}",
                build,
            )

    def nll(rng):
        x, t = smooth((4, 5), rng), labels(4, 5, rng)
        return (lambda x: F.nll_loss(F.log_softmax(x, 1), t)), (x,)

    def mse(rng):
        x, y = smooth((3, 4), rng), smooth((3, 4), rng)
        return F.mse_loss, (x, y)

    yield "nll_loss", "log_softmax(x(4,5))", nll
    yield "mse_loss", "x(3,4) y(3,4)", mse


def _dropout_cases():
    def build(rng):
        def fn(x):
            mc.manual_seed(0)  # the same mask on every evaluation, so fn is a function of x
            return F.dropout(x, p=0.3, training=True)

        return fn, (smooth((4, 5), rng),)

    yield "dropout", "x(4,5) p=0.3 (fixed mask)", build


def _fused_cases():
    yield "channel_pool", "x(2,4,3,3)", _unary(distinct, (2, 4, 3, 3), F.channel_pool)
    for pools in (("avg",), ("max",), ("avg", "max")):
        yield (
            "global_pool",
            f"x(2,3,3,3) pool_types={pools}",
            _unary(distinct, (2, 3, 3, 3), lambda x, p=pools: F.global_pool(x, p)),
        )
    for logits_shape, kind in (((2, 3, 1, 1), "channel"), ((2, 1, 4, 4), "spatial")):

        def build(rng, shape=logits_shape):
            return F.gate, (smooth((2, 3, 4, 4), rng), smooth(shape, rng))

        yield "gate", f"x(2,3,4,4) {kind} logits({','.join(map(str, logits_shape))})", build


def _module_cases():
    specs = [
        ("SqueezeExcitation", "C=8 reduction=2", lambda: nn.SqueezeExcitation(8, reduction=2)),
        ("ChannelAttention", "C=8 reduction=2", lambda: nn.ChannelAttention(8, reduction=2)),
        (
            "ChannelAttention",
            "C=8 pool_types=('max',)",
            lambda: nn.ChannelAttention(8, reduction=2, pool_types=("max",)),
        ),
        ("SpatialAttention", "kernel_size=3", lambda: nn.SpatialAttention(3)),
        ("SpatialAttention", "kernel_size=7", lambda: nn.SpatialAttention(7)),
        ("CBAM", "C=8 reduction=2 kernel_size=3", lambda: nn.CBAM(8, reduction=2, kernel_size=3)),
        (
            "CBAM",
            "C=8 reduction=4 kernel_size=7 paper",
            lambda: nn.CBAM.paper(8, reduction=4, kernel_size=7),
        ),
    ]
    for name, params, make in specs:
        for training in (True, False):
            yield (
                name,
                f"x(2,8,4,4) {params} {'train' if training else 'eval'}",
                _module(make, training),
            )


def _module(make, training):
    def build(rng):
        mc.manual_seed(int(rng.integers(2**31)))
        module = make().double().train(training)
        x = distinct((2, 8, 4, 4), rng)
        params = tuple(module.parameters())
        return (lambda x, *_: module(x)), (x, *params)

    return build


def _unary(make_input, shape, fn):
    def build(rng):
        return fn, (make_input(shape, rng),)

    return build


def _kw(kwargs):
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


CASE_GROUPS = (
    _conv_cases,
    _linear_cases,
    _batch_norm_cases,
    _pool_cases,
    _activation_cases,
    _loss_cases,
    _dropout_cases,
    _fused_cases,
    _module_cases,
)


def cases():
    """``[(name, params, build)]``; ``build(rng)`` returns ``(fn, inputs)``."""
    return [case for group in CASE_GROUPS for case in group()]


def names():
    return sorted({name for name, _, _ in cases()})


def uncovered():
    """Names in ``minicbam.nn.functional`` that no case checks (new ops need a case here)."""
    return sorted(set(F.__all__) - set(names()))


# -------------------------------------------------------------------------------- run


def check(fn, inputs, seed=0):
    """(max |numeric - analytic| over all checked inputs, list of failure reports)."""
    return gradient_errors(fn, inputs, EPS, ATOL, RTOL, seed)


def run_case(name, params, build):
    try:
        fn, inputs = build(np.random.default_rng(sum(map(ord, name + params))))
        error, failures = check(fn, inputs)
    except Exception as e:  # noqa: BLE001 - a crash is a row of the table, not a stop
        return Row(name, params, float("nan"), "ERROR", f"{type(e).__name__}: {e}")
    return Row(name, params, error, "FAIL" if failures else "ok", "\n".join(failures))


def select(only=None):
    """The cases whose name is in ``only`` (case-insensitive); all when ``only`` is empty."""
    if not only:
        return cases()
    wanted = {n.lower() for n in only}
    unknown = wanted - {n.lower() for n in names()}
    if unknown:
        raise ValueError(
            f"unknown gradcheck case(s) {', '.join(sorted(unknown))}; "
            f"choose from: {', '.join(names())}"
        )
    return [c for c in cases() if c[0].lower() in wanted]


def run_all(only=None, on_row=None):
    """Run the selected cases; ``on_row(row)`` is called as each finishes. Returns the rows.

    minicbam's generator is restored afterwards (dropout and module cases reseed it).
    """
    selected = select(only)
    saved = generator().bit_generator.state
    rows = []
    try:
        for name, params, build in selected:
            rows.append(run_case(name, params, build))
            if on_row is not None:
                on_row(rows[-1])
    finally:
        generator().bit_generator.state = saved
    return rows


def format_row(row, width=66):
    error = "-" if np.isnan(row.max_abs_error) else f"{row.max_abs_error:.2e}"
    return f"{row.name:<20} {row.params:<{width}} {error:>10}  {row.status}"


def header(width=66):
    return f"{'op / module':<20} {'shape / params':<{width}} {'max |err|':>10}  status"
