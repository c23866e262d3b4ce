"""The README's first command on an empty kernel cache: compiling ahead on two processes
(minicbam/app/first_run.py) against compiling during epoch 1 in one, alternating.

    python benchmarks/first_run.py [--rounds 2] [--epochs 20]

Each round runs ``python -m minicbam train --overwrite`` twice, each time on a fresh
NUMBA_CACHE_DIR: once as shipped (two processes) and once with
``MINICBAM_PARALLEL_COMPILE=0`` (one process), which goes first alternates between rounds.
Then the same command twice on the last round's (now warm) cache. Reports each process's
wall time (interpreter start-up included, as a user waits for it), its "done in" line, the
CPU time of the process and its children, and the load average before each run; medians
at the end. The wall time is the figure of the first-run target; CPU time shows what the
helper process costs in total.
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import base_environment


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(cache, out, epochs, parallel):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    if not parallel:
        env["MINICBAM_PARALLEL_COMPILE"] = "0"
    command = [sys.executable, "-m", "minicbam", "train", "--overwrite", "--no-progress"]
    command += ["--epochs", str(epochs), "--out", out]
    load, cpu, start = os.getloadavg()[0], children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    said = re.search(r"done in ([0-9.]+)s: test accuracy ([0-9.]+%)", done.stdout)
    first = "first run" in done.stdout
    return {
        "wall": wall,
        "done_in": float(said[1]),
        "acc": said[2],
        "cpu": cpu,
        "load": load,
        "notice": first,
    }


def show(label, r):
    print(
        f"{label:<28} wall {r['wall']:6.1f} s  done in {r['done_in']:6.1f} s  "
        f"cpu {r['cpu']:6.1f} s  test acc {r['acc']}  load {r['load']:.2f}"
        + ("" if r["notice"] else "  (no first-run notice)"),
        flush=True,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args(argv)
    env = base_environment()
    print(" ".join(f"{k}={v}" for k, v in env.items() if k != "loadavg"), flush=True)
    runs = {"two processes": [], "one process": [], "warm cache": []}
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        out = os.path.join(tmp, "run")
        for i in range(args.rounds):
            order = [True, False] if i % 2 == 0 else [False, True]
            for parallel in order:
                cache = tempfile.mkdtemp(dir=tmp, prefix="cache-")
                label = "two processes" if parallel else "one process"
                runs[label].append(train(cache, out, args.epochs, parallel))
                show(f"empty cache, {label}", runs[label][-1])
        for _ in range(2):
            runs["warm cache"].append(train(cache, out, args.epochs, True))
            show("warm cache", runs["warm cache"][-1])
    print("medians:")
    for label, rows in runs.items():
        wall = statistics.median(r["wall"] for r in rows)
        cpu = statistics.median(r["cpu"] for r in rows)
        print(f"  {label:<14} wall {wall:6.1f} s  cpu {cpu:6.1f} s  ({len(rows)} runs)")


if __name__ == "__main__":
    main()
