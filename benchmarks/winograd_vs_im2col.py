"""Winograd F(4x4, 3x3) vs im2col + GEMM for float32 3x3 convs from the digits CNN's size to
ResNet-18's (docs/performance.md, "Winograd against im2col, shape by shape").

    PYTHONPATH=$PWD python benchmarks/winograd_vs_im2col.py              # forward + backward
    PYTHONPATH=$PWD python benchmarks/winograd_vs_im2col.py --digits     # the digits train step

Per shape (N, C, C_out, side), padding 1: the median of ``--calls`` forward + backward calls
with ``conv2d.WINOGRAD = "always"`` and with ``"never"``, ``--passes`` alternating passes in
this process (one framework, two algorithms: no cross-process fairness question), and the
ratio im2col / Winograd (above 1: Winograd faster). ``--digits`` times the digits CNN + CBAM
Adam step (batch 128) under "always" and "never" instead.
"""

import argparse
import importlib

import numpy as np
import workloads

import minicbam as mc

# the module (``minicbam.ops.conv2d`` as an attribute is the function of that name)
conv2d_module = importlib.import_module("minicbam.ops.conv2d")

SHAPES = [
    (128, 32, 64, 4),  # the digits CNN's second conv
    (64, 32, 32, 8),
    (32, 64, 64, 8),
    (8, 128, 128, 8),
    (16, 64, 64, 16),
    (64, 64, 64, 8),
    (64, 128, 128, 4),
    (16, 256, 256, 4),
    (32, 64, 64, 16),
    (32, 128, 128, 8),
    (8, 64, 64, 32),
    (64, 64, 64, 32),  # ResNet-18's four stages at batch 64
    (64, 128, 128, 16),
    (64, 256, 256, 8),
    (64, 512, 512, 4),
]


def _conv_step(shape):
    n, c, co, side = shape
    rng = np.random.default_rng(0)
    x = mc.tensor(rng.standard_normal((n, c, side, side)).astype(np.float32), requires_grad=True)
    w = mc.tensor(rng.standard_normal((co, c, 3, 3)).astype(np.float32), requires_grad=True)
    return workloads.mc_conv_steps(x, w, padding=1)[1]


def _digits_step():
    return workloads.WORKLOADS["digits_cbam_train"].minicbam(False)


def _timed(setting, step, calls):
    saved = conv2d_module.WINOGRAD
    conv2d_module.WINOGRAD = setting
    try:
        return workloads.median_ms(step, calls, warmup=3)
    finally:
        conv2d_module.WINOGRAD = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--digits", action="store_true")
    args = parser.parse_args()
    if args.digits:
        step = _digits_step()  # one model: both settings share its weights and optimizer
        for p in range(args.passes):
            wino = _timed("always", step, args.calls * 10)
            never = _timed("never", step, args.calls * 10)
            print(f"digits step pass {p + 1}: winograd {wino:.2f} ms  im2col {never:.2f} ms")
        return
    print(f"{'(N, C, C_out, side)':<22} {'MFLOP':>6} {'winograd ms':>12} {'im2col ms':>10} ratio")
    for shape in SHAPES:
        n, c, co, side = shape
        step = _conv_step(shape)
        pairs = [
            (_timed("always", step, args.calls), _timed("never", step, args.calls))
            for _ in range(args.passes)
        ]
        wino, im2col = (float(np.median(v)) for v in zip(*pairs))
        mflop = 2 * n * c * co * 9 * side * side / 1e6
        print(f"{shape!s:<22} {mflop:6.0f} {wino:12.2f} {im2col:10.2f} {im2col / wino:.2f}")


if __name__ == "__main__":
    main()
