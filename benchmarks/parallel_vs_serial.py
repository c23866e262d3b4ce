"""Does a kernel's ``parallel=True`` version pay at a model's shapes? Per-kernel wall time of
a train step with every parallel Kernel's parallel version run from
``device.PARALLEL_MIN_ELEMENTS`` elements (whatever its ``parallel_from``), against the same
steps with every parallel Kernel forced onto its serial twin (``device.serial_twin``), in
alternating rounds in one process (so both see the same machine load).

    python benchmarks/parallel_vs_serial.py --model digits --batch 64 --rounds 6 --steps 20
    python benchmarks/parallel_vs_serial.py --model resnet18 --batch 64 --rounds 2 --steps 2

Run it on a warm cache (the first steps compile both versions of every kernel).
"""

import argparse
import collections
import statistics
import time

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import device, models, optim
from minicbam.device import Kernel


def _model(name, batch):
    rng = np.random.default_rng(0)
    if name == "digits":
        model = models.DigitsCNN(num_classes=10, attention="cbam")
        shape = (batch, 1, 8, 8)
    else:
        model = models.resnet18(num_classes=10, attention="cbam", stem="cifar")
        shape = (batch, 3, 32, 32)
    x = mc.tensor(rng.standard_normal(shape).astype(np.float32))
    return model.train(), x, mc.tensor(np.arange(batch) % 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digits", "resnet18"), default="digits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model, x, y = _model(args.model, args.batch)
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    dispatch = Kernel.call_cpu
    mode = ["parallel"]
    times = {"parallel": collections.Counter(), "serial": collections.Counter()}
    twins = {}

    def timed(kernel, size, out, *rest):
        start = time.perf_counter()
        parallel = getattr(kernel.cpu, "targetoptions", {}).get("parallel", False)
        if parallel and mode[0] == "serial":
            if kernel not in twins:
                twins[kernel] = device.serial_twin(kernel.cpu)
            result = twins[kernel](out, *rest)
        elif parallel and size >= device.PARALLEL_MIN_ELEMENTS:  # whatever parallel_from says
            result = kernel.cpu(out, *rest)
        else:
            result = dispatch(kernel, size, out, *rest)
        times[mode[0]][kernel.name] += time.perf_counter() - start
        return result

    Kernel.call_cpu = timed
    for name in ("parallel", "serial"):
        mode[0] = name
        step()
        step()
    walls = {"parallel": [], "serial": []}
    for counter in times.values():
        counter.clear()
    for r in range(args.rounds):
        for name in ("parallel", "serial") if r % 2 == 0 else ("serial", "parallel"):
            mode[0] = name
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            walls[name].append((time.perf_counter() - start) / args.steps)
    n = args.rounds * args.steps
    print(
        f"{args.model} batch {args.batch}: step median (min) "
        + ", ".join(
            f"{m} {1e3 * statistics.median(w):.1f} ({1e3 * min(w):.1f}) ms"
            for m, w in walls.items()
        )
    )
    print(f"{'kernel':40s} {'parallel us/step':>17s} {'serial us/step':>15s}")
    for name, spent in times["parallel"].most_common():
        print(f"{name:40s} {1e6 * spent / n:17.0f} {1e6 * times['serial'][name] / n:15.0f}")


if __name__ == "__main__":
    main()
