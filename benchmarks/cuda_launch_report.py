"""How much of a GPU each CUDA kernel can keep busy, at real model shapes, without a GPU.

    NUMBA_ENABLE_CUDASIM=1 python benchmarks/cuda_launch_report.py [--model resnet18|digits]
                                                                  [--batch N] [--counts]

Runs one training step (forward, backward, SGD) of the model on the CPU while recording
every Kernel call (``device.recorded_calls``), then asks each call's CUDA launcher what it
would launch on a real GPU for the same arguments (``launch.gpu_shape``): blocks x threads
and the work items of its grid-stride loop, against the elements of the call's largest
array. A kernel whose work items are far fewer than its elements walks planes or rows with
one thread each. The simulator is needed only to build the launchers (nothing is launched).
``config`` kernels (GEMM tiles) report blocks x threads of the GPU tiling, marked ``*``:
they have no grid-stride work items (each thread computes a block of outputs).

``--counts`` instead runs three Adam steps of a small digits CNN on "cuda" (the simulator)
and prints what the last one asked of the device (minicbam.device_events): launches,
buffers requested (pool hits and driver allocations), host<->device copies, and the
caching allocator's counters.

An H200 keeps 132 SMs x 2048 = 270,336 threads resident; a launch with fewer threads
than that leaves the rest of the chip idle for its duration.
"""

import argparse
import os
import sys
from collections import defaultdict

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import device
from minicbam.models import DigitsCNN, resnet18
from minicbam.optim import SGD

RESIDENT_THREADS = 132 * 2048  # H200: SMs x resident threads per SM


def record_step(model_name, batch):
    mc.manual_seed(0)
    if model_name == "digits":
        model, x = DigitsCNN(attention="cbam"), mc.randn(batch, 1, 8, 8)
    else:
        model = resnet18(num_classes=10, attention="cbam", stem="cifar")
        x = mc.randn(batch, 3, 32, 32)
    y = mc.tensor(np.arange(batch) % 10)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    device.recorded_calls = []
    try:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return device.recorded_calls
    finally:
        device.recorded_calls = None


def launch_table(calls):
    rows = defaultdict(lambda: [0, 0, 0, 0, False])  # calls, threads, items, elements, config
    for kernel, (out, *args) in calls:
        if kernel.cuda_factory is None:
            continue
        if kernel._cuda_launch is None:
            kernel._cuda_launch = kernel.cuda_factory()
        blocks, threads, items = kernel._cuda_launch.gpu_shape(out, *args)
        threads_total = int(np.prod(blocks)) * int(np.prod(threads))
        largest = max([out.size] + [a.size for a in args if isinstance(a, np.ndarray)])
        row = rows[kernel.name.removesuffix("_cpu").lstrip("_")]
        row[0] += 1
        row[1] += threads_total
        row[2] += largest if items is None else items
        row[3] += largest
        row[4] = row[4] or items is None
    return sorted(rows.items(), key=lambda kv: kv[1][1] / max(kv[1][0], 1))


def step_counts(batch):
    from minicbam.device_events import count_device_events
    from minicbam.optim import Adam

    mc.manual_seed(0)
    model = DigitsCNN(width=4, attention="cbam").to("cuda")
    opt = Adam(model.parameters(), lr=1e-3)
    x = mc.randn(batch, 1, 8, 8).to("cuda")
    y = mc.tensor(np.arange(batch) % 10).to("cuda")

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: kernels built, optimizer state allocated
    step()  # the caching allocator now holds a block for every buffer a step needs at once
    with count_device_events() as events:
        step()
    return events


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("resnet18", "digits"), default="resnet18")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--counts", action="store_true", help="device events of a train step")
    args = parser.parse_args(argv)
    if device.cuda_backend() != "sim":
        sys.exit("run with NUMBA_ENABLE_CUDASIM=1 (it only builds the CUDA launchers)")
    if args.counts:
        events = step_counts(args.batch)
        print(f"DigitsCNN(width=4, cbam) Adam step on cuda, batch {args.batch}:", events.summary())
        print("launches per kernel:", dict(events.per_kernel.most_common()))
        print("caching allocator:", device.memory_stats())
        return
    calls = record_step(args.model, args.batch)
    print(f"{args.model}, batch {args.batch}: {len(calls)} kernel calls in one SGD step")
    print("| kernel | calls | threads per call | work items per call | elements per call |"
          " elements per thread | share of an H200 |")
    print("|---|---|---|---|---|---|---|")
    for name, (n, threads, items, elements, config) in launch_table(calls):
        mark = " *" if config else ""
        print(f"| {name}{mark} | {n} | {threads // n:,} | {items // n:,} | {elements // n:,} | "
              f"{elements / max(threads, 1):,.0f} | {min(1, threads / n / RESIDENT_THREADS):.1%} |")


if __name__ == "__main__":
    main()
