"""Would a channels-last (NHWC) activation layout pay for the Winograd convolutions?
(docs/performance.md, "The tile gather's loop order, and channels-last").

    PYTHONPATH=$PWD python benchmarks/channels_last.py [--rounds 5] [--calls 20]

The Winograd pipeline (minicbam/kernels/winograd.py) works channels-innermost: its input
transform gathers each tile's 6x6 patch from x's NCHW planes into a (6, 6, C) scratch, and
its output transform scatters each (4, 4, CO) tile back into y's planes; the loop order of
that gather and scatter (channel loop outermost or innermost) is an argument of the kernels,
chosen by ``winograd.channels_innermost``. With NHWC activations both would move contiguous
runs of C values. This script times, for one conv at a time and on one thread, over every
tile of a batch and block by block as the pipeline runs them: both transforms with either
order on NCHW arrays, the same kernels on NHWC buffers (passed as NCHW-shaped views, so the
channel-innermost loops read and write contiguous runs), and the NCHW <-> NHWC transposes
that one channels-last conv inside an NCHW network would add. Every variant's results are
checked equal before anything is timed.

Each number is the median over ``--rounds`` rounds of the minimum of ``--calls`` calls
(ms), the variants alternating within a round.
"""

import argparse
import functools
import statistics
import time

import numpy as np

from minicbam.kernels import winograd

SHAPES = [  # (N, C = CO, side): the ResNet-18 stages at batch 64, the digits CNN's second conv
    (64, 64, 32),
    (64, 128, 16),
    (64, 256, 8),
    (64, 512, 4),
    (128, 32, 4),
]


def _input(a, layout, inner):
    """minicbam's input transform over every block; NHWC: on x's NHWC buffer seen as NCHW."""
    th, tw = a["geom"]
    x = a[layout] if layout == "nchw" else a[layout].transpose(0, 3, 1, 2)
    for t0, t1 in a["blocks"]:
        winograd._input_transform(
            a["V"], x, t0, t1, 0, th, tw, 1, 1, a["k"], a["patch"], a["tmp"], inner
        )


def _output(a, layout, inner):
    th, tw = a["geom"]
    y = a["y"][layout] if layout == "nchw" else a["y"][layout].transpose(0, 3, 1, 2)
    for t0, t1 in a["blocks"]:
        winograd._output_transform(
            y, a["M"], t0, t1, 0, th, tw, a["k"], a["ytile"], a["tmp"], inner
        )


# name -> (activation layout, channel loop innermost)
ORDERS = {
    "NCHW, channels outermost": ("nchw", False),
    "NCHW, channels innermost": ("nchw", True),
    "NHWC (channels innermost)": ("nhwc", True),
}


def _case(shape):
    """Arrays and block bounds for one conv (padding 1), both layouts."""
    N, C, side = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, side, side)).astype(np.float32)
    th, tw, P = winograd._tiles(side, side, N)
    blocks = winograd._blocks(P, 2 * C, 4, pooled=False)
    nb = max(t1 - t0 for t0, t1 in blocks)
    return {
        "nchw": x,
        "nhwc": np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
        "y": {"nchw": np.empty_like(x), "nhwc": np.empty((N, side, side, C), np.float32)},
        "V": np.empty((6, 6, nb + 1, C), np.float32),  # one spare tile row, as the pipeline's
        "M": rng.standard_normal((6, 6, nb + 1, C)).astype(np.float32),
        "blocks": blocks,
        "geom": (th, tw),
        "k": winograd._matrices(np.float32)["k"],
        "patch": np.empty((6, 6, C), np.float32),
        "tmp": np.empty((6, 6, C), np.float32),
        "ytile": np.empty((4, 4, C), np.float32),
    }


def _as_nchw(y, layout):
    return y if layout == "nchw" else y.transpose(0, 3, 1, 2)


def check(a):
    """Every order computes the same V and y (V: the tile rows of the last block)."""
    t0, t1 = a["blocks"][-1]
    first_V = first_y = None
    for name, (layout, inner) in ORDERS.items():
        a["V"].fill(np.nan)
        _input(a, layout, inner)
        V = a["V"][:, :, : t1 - t0].copy()
        first_V = V if first_V is None else first_V
        a["y"][layout].fill(np.nan)
        _output(a, layout, inner)
        y = _as_nchw(a["y"][layout], layout).copy()
        first_y = y if first_y is None else first_y
        if not (np.array_equal(V, first_V) and np.array_equal(y, first_y)):
            raise AssertionError(f"{name}: the transforms differ from the first order's")


def _rows():
    """name -> callable(a): every timed row."""
    rows = {}
    for name, (layout, inner) in ORDERS.items():
        rows[f"input transform, {name}"] = functools.partial(_input, layout=layout, inner=inner)
    for name, (layout, inner) in ORDERS.items():
        rows[f"output transform, {name}"] = functools.partial(_output, layout=layout, inner=inner)
    rows["transpose x NCHW -> NHWC"] = lambda a: np.copyto(
        a["nhwc"], a["nchw"].transpose(0, 2, 3, 1)
    )
    rows["transpose y NHWC -> NCHW"] = lambda a: np.copyto(
        a["y"]["nchw"], a["y"]["nhwc"].transpose(0, 3, 1, 2)
    )
    return rows


def _min_ms(fn, a, calls):
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        fn(a)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args(argv)
    rows = _rows()
    for shape in SHAPES:
        a = _case(shape)
        check(a)
        times = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, fn in rows.items():
                times[name].append(_min_ms(fn, a, args.calls))
        _, C, side = shape
        picks = "innermost" if winograd.channels_innermost(side * side, C) else "outermost"
        mib = a["nchw"].nbytes / 2**20
        print(
            f"(N, C, side) = {shape}: {len(a['blocks'])} blocks, x {mib:.0f} MiB; "
            f"minicbam puts the channel loop {picks}"
        )
        for name, values in times.items():
            print(f"  {name:46s} {statistics.median(values):8.2f} ms")


if __name__ == "__main__":
    main()
