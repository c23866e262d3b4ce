"""Cold start: ``import minicbam`` + one CBAM forward against ``import torch`` + the same
forward, each in a fresh process, alternating over --rounds (warm numba cache: run once
before timing, or pass --warmup-run).

    python benchmarks/cold_start.py [--rounds 5]

Each process reports the seconds from its first statement to the end of the forward (the
interpreter's own start-up is the same for both and is left out); the parent also reports
each process's wall time. Medians over the rounds; ratio = torch / minicbam.

"Warm" also means Python's bytecode cache: pip byte-compiles torch when it installs it, and
the first import of an editable minicbam writes its ``__pycache__`` -- unless
``PYTHONDONTWRITEBYTECODE`` is set (some shells and sandboxes set it), when every import
compiles minicbam's ~60 modules from source again (~0.2 s). ``--warmup-run`` therefore
also byte-compiles the package (``compileall``, a no-op when the cache is fresh), so both
sides start from their installed state; the setting is printed with the results.
"""

import argparse
import compileall
import importlib.util
import os
import statistics
import subprocess
import sys
import time

SHAPE = (8, 64, 16, 16)

MINICBAM = f"""
import time
t0 = time.perf_counter()
import numpy as np
import minicbam as mc
from minicbam import nn
x = mc.tensor(np.random.default_rng(0).standard_normal({SHAPE}).astype(np.float32))
with mc.no_grad():
    nn.CBAM(64)(x)
print(time.perf_counter() - t0)
"""

TORCH = f"""
import time
t0 = time.perf_counter()
import numpy as np
import torch
tnn = torch.nn
class CBAM(tnn.Module):
    def __init__(self, c, r=16, k=7):
        super().__init__()
        self.mlp = tnn.Sequential(tnn.Linear(c, c // r), tnn.ReLU(), tnn.Linear(c // r, c))
        self.conv = tnn.Conv2d(2, 1, k, padding=k // 2, bias=False)
        self.bn = tnn.BatchNorm2d(1)
    def forward(self, x):
        a = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        x = x * torch.sigmoid(a)[:, :, None, None]
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(s)))
x = torch.tensor(np.random.default_rng(0).standard_normal({SHAPE}).astype(np.float32))
with torch.no_grad():
    CBAM(64)(x)
print(time.perf_counter() - t0)
"""


def run(code):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup-run", action="store_true", help="one untimed minicbam run first")
    args = p.parse_args(argv)
    if args.warmup_run:
        package = os.path.dirname(importlib.util.find_spec("minicbam").origin)
        compileall.compile_dir(package, quiet=1)
        run(MINICBAM)
    print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    times = {"minicbam": [], "torch": []}
    for _ in range(args.rounds):
        for name, code in (("minicbam", MINICBAM), ("torch", TORCH)):
            times[name].append(run(code))
    for name, rows in times.items():
        inside = statistics.median(r[0] for r in rows)
        wall = statistics.median(r[1] for r in rows)
        print(
            f"{name:9s} import + CBAM forward {SHAPE}: {inside:.3f} s (process wall {wall:.3f} s)"
        )
    mine = statistics.median(r[0] for r in times["minicbam"])
    theirs = statistics.median(r[0] for r in times["torch"])
    print(f"ratio torch / minicbam: {theirs / mine:.2f}")


if __name__ == "__main__":
    main()
