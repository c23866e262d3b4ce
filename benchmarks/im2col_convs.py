"""ResNet-18's im2col + GEMM convolutions (CIFAR stem, batch 64) on the CPU: the 3x3 stem,
the three stride-2 3x3 convs and the three 1x1 stride-2 shortcuts, forward and forward +
backward (docs/performance.md, "im2col").

    PYTHONPATH=$PWD python benchmarks/im2col_convs.py [--calls 11] [--batch 64]

Medians of ``--calls`` calls in one process, after two untimed ones. minicbam only: this is
a before/after yardstick for the im2col path (the fair comparison with PyTorch is
``benchmarks/run.py``).
"""

import argparse

import numpy as np
import workloads

import minicbam as mc

# (name, C, C_out, side, kernel, stride); padding kernel // 2
CONVS = [
    ("stem 3x3 3->64 at 32", 3, 64, 32, 3, 1),
    ("3x3 s2 64->128 at 32", 64, 128, 32, 3, 2),
    ("3x3 s2 128->256 at 16", 128, 256, 16, 3, 2),
    ("3x3 s2 256->512 at 8", 256, 512, 8, 3, 2),
    ("1x1 s2 64->128 at 32", 64, 128, 32, 1, 2),
    ("1x1 s2 128->256 at 16", 128, 256, 16, 1, 2),
    ("1x1 s2 256->512 at 8", 256, 512, 8, 1, 2),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=11)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'conv':<24} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for name, c, co, side, k, stride in CONVS:
        x_data = rng.standard_normal((args.batch, c, side, side)).astype(np.float32)
        x = mc.tensor(x_data, requires_grad=True)
        w = mc.tensor(rng.standard_normal((co, c, k, k)).astype(np.float32), requires_grad=True)
        forward, forward_backward = workloads.mc_conv_steps(x, w, stride, k // 2)
        fwd = workloads.median_ms(forward, args.calls, warmup=2)
        both = workloads.median_ms(forward_backward, args.calls, warmup=2)
        print(f"{name:<24} {fwd:11.2f} {both:11.2f}")


if __name__ == "__main__":
    main()
