"""The data-parallel scaling model of docs/distributed.md, from bench_distributed.py's figures.

    python benchmarks/scaling_model.py RESULTS.jsonl [--hidden H] [--compute-ms MODEL=MS ...]

Weak scaling (a fixed batch per machine), one process per machine, ring allreduce:

    T_comm(N)  = 2 (N - 1) / N * G / B_link  +  2 (N - 1) * alpha * buckets
    exposed(N) = max((1 - H) T_comm(N), T_comm(N) - T_backward),   T_backward = 2/3 T_step
    E(N)       = T_step / (T_step + exposed(N))

G: gradient bytes (float32), B_link: link bandwidth, alpha: per-message latency (an
assumption: 20 us on 10 Gbit/s Ethernet, 5 us on 100 Gbit/s), buckets: DDP buckets of
25 MB, H: the fraction of the communication hidden behind backward (0: none; measured by
bench_distributed.py as ``hidden_fraction``), never more than backward lasts; T_step:
the measured single-process step time (``step`` records with ``"ddp": false``).
``--compute-ms resnet18=30`` replaces a measured step time by a hypothetical one (to ask
what a faster device would see); the table marks it.
"""

import argparse
import json
import math

LINKS = {"10 Gbit/s": (10e9 / 8, 20e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}
MACHINES = (8, 64, 256)
BUCKET_BYTES = 25 * 2**20


def comm_seconds(n, grad_bytes, bandwidth, latency):
    buckets = math.ceil(grad_bytes / BUCKET_BYTES)
    return 2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * latency * buckets


def efficiency(step_s, n, grad_bytes, bandwidth, latency, hidden):
    comm = comm_seconds(n, grad_bytes, bandwidth, latency)
    exposed = max((1 - hidden) * comm, comm - step_s * 2 / 3)
    return step_s / (step_s + exposed)


def table(records, hidden, overrides):
    steps = [r for r in records if r["bench"] == "step" and not r["ddp"]]
    best = {}
    for r in steps:  # the fastest single-process configuration of each model
        if r["model"] not in best or r["min_s"] < best[r["model"]]["min_s"]:
            best[r["model"]] = r
    lines = [
        "| model | gradient MB | step (s) | link | T_comm at 8 / 64 / 256 (ms) "
        "| efficiency at 8 / 64 / 256 |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in sorted(best.items()):
        step = overrides.get(model, r["min_s"])
        note = " (hypothetical)" if model in overrides else ""
        g = r["gradient_bytes"]
        for link, (bw, lat) in LINKS.items():
            comm = " / ".join(f"{comm_seconds(n, g, bw, lat) * 1e3:.0f}" for n in MACHINES)
            eff = " / ".join(f"{efficiency(step, n, g, bw, lat, hidden):.1%}" for n in MACHINES)
            lines.append(
                f"| {model} | {g / 1e6:.1f} | {step:.3g}{note} | {link} | {comm} | {eff} |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--hidden", type=float, default=0.0, help="H in [0, 1] (default 0)")
    p.add_argument("--compute-ms", nargs="*", default=[], metavar="MODEL=MS")
    args = p.parse_args()
    with open(args.results) as f:
        records = [json.loads(line) for line in f if line.strip()]
    overrides = {}
    for item in args.compute_ms:
        model, ms = item.split("=")
        overrides[model] = float(ms) / 1e3
    print(table(records, args.hidden, overrides))


if __name__ == "__main__":
    main()
