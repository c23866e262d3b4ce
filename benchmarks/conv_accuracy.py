"""float32 error of each CPU convolution algorithm against a float64 reference.

    python benchmarks/conv_accuracy.py [--batch 8]

For the 3x3, padding-1 convolutions of ResNet18's stages, runs y, gx and gW in float32 with
im2col + GEMM and with Winograd F(4x4, 3x3), and in float64 with im2col + GEMM (an exact
sum), and prints max |float32 - float64| / max |float64| for each (a markdown table).
Weights are He-initialised, x and gy standard normal.
"""

import argparse
import importlib

import numpy as np

import minicbam as mc
from minicbam.ops.conv2d import conv2d

conv2d_module = importlib.import_module("minicbam.ops.conv2d")
SHAPES = [(64, 32), (128, 16), (256, 8), (512, 4)]  # (channels, side)


def grads(x, w, gy, dtype, winograd):
    """(algorithm used, [y, gx, gw] as float64) for one conv."""
    conv2d_module.WINOGRAD = winograd
    mx = mc.tensor(x.astype(dtype), requires_grad=True)
    mw = mc.tensor(w.astype(dtype), requires_grad=True)
    y = conv2d(mx, mw, padding=1)
    algorithm = y.creator.algorithm
    y.backward(mc.tensor(gy.astype(dtype)))
    return algorithm, [t.numpy().astype(np.float64) for t in (y, mx.grad, mw.grad)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| x shape | algorithm (float32) | y | gx | gW |")
    print("|---|---|---|---|---|")
    saved = conv2d_module.WINOGRAD
    try:
        for c, side in SHAPES:
            x = rng.standard_normal((args.batch, c, side, side))
            w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))
            gy = rng.standard_normal(x.shape)
            _, ref = grads(x, w, gy, np.float64, "never")
            for winograd in ("never", "always"):
                algorithm, got = grads(x, w, gy, np.float32, winograd)
                errors = [np.abs(g - r).max() / np.abs(r).max() for g, r in zip(got, ref)]
                cells = " | ".join(f"{e:.1e}" for e in errors)
                print(f"| {x.shape} | {algorithm} | {cells} |", flush=True)
    finally:
        conv2d_module.WINOGRAD = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
