"""The developer commands of the ``minicbam`` command line: ``gradcheck`` and ``bench``.

    minicbam gradcheck --only conv2d CBAM
    minicbam bench -- --quick
    minicbam bench --builtin --repeats 20

``minicbam.app.cli`` registers them with ``add_gradcheck`` and ``add_bench``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn
from minicbam.app import verify
from minicbam.app.cli_types import positive_int
from minicbam.app.config import UserError
from minicbam.models import DigitsCNN

# ------------------------------------------------------------------------- gradcheck


def add_gradcheck(sub):
    """Add the ``gradcheck`` command to the subparsers ``sub``."""
    p = sub.add_parser(
        "gradcheck",
        help="check every op's and attention module's gradients",
        description="Finite-difference gradient checks in float64 of every "
        "functional op and attention module; exits 1 if any fails.",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="only these ops/modules (see --list), e.g. --only conv2d CBAM",
    )
    p.add_argument("--list", action="store_true", help="list the op and module names")
    p.set_defaults(handler=cmd_gradcheck)


def cmd_gradcheck(args):
    if args.list:
        print("\n".join(verify.names()))
        return 0
    only = [n for item in args.only or [] for n in item.split(",") if n]
    try:
        selected = verify.select(only)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(verify.header())
    rows = verify.run_all(only, on_row=lambda row: print(verify.format_row(row), flush=True))
    bad = [r for r in rows if r.status != "ok"]
    for row in bad:
        print(f"\n{row.name} [{row.params}] {row.status}:\n{row.detail}")
    print(f"\n{len(selected) - len(bad)} of {len(selected)} checks passed")
    if not only and verify.uncovered():
        print(f"not covered by a case: {', '.join(verify.uncovered())}")
    return 1 if bad else 0


# ----------------------------------------------------------------------------- bench


def add_bench(sub):
    """Add the ``bench`` command to the subparsers ``sub``."""
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (benchmarks/run.py if present)",
        description="Run benchmarks/run.py of a source checkout, passing ARGS "
        "on (e.g. `minicbam bench -- --quick`); without it, or with --builtin, "
        "time a CBAM forward/backward and a DigitsCNN training step (medians).",
    )
    p.add_argument("--builtin", action="store_true", help="the small built-in timing only")
    p.add_argument(
        "--repeats", type=positive_int, default=10, help="built-in timing repeats (default: 10)"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    p.set_defaults(handler=cmd_bench)


def _bench_script():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (root, os.getcwd()):
        path = os.path.join(base, "benchmarks", "run.py")
        if os.path.isfile(path):
            return path
    return None


def cmd_bench(args):
    script = None if args.builtin else _bench_script()
    if script is None:
        return builtin_bench(args.repeats)
    extra = [a for a in args.args if a != "--"]
    print(f"running {script} {' '.join(extra)}".rstrip(), flush=True)
    return subprocess.call([sys.executable, script, *extra])


def builtin_bench(repeats):
    """Median wall time of a few fixed workloads; a quick sanity check, not a benchmark suite."""
    mc.manual_seed(0)
    cbam, digits = nn.CBAM(64, reduction=16, kernel_size=7), DigitsCNN()
    x = mc.randn(32, 64, 16, 16, requires_grad=True)
    images, labels = mc.randn(64, 1, 8, 8), mc.tensor([i % 10 for i in range(64)])

    def cbam_step():
        cbam(x).sum().backward()

    def digits_step():
        F.cross_entropy(digits(images), labels).backward()

    print(
        f"built-in timing (median of {repeats}, after 2 warm-up calls); "
        "benchmarks/run.py has the full suite"
    )
    for name, fn in (
        ("CBAM(64) fwd+bwd, x (32, 64, 16, 16)", cbam_step),
        ("DigitsCNN(cbam) fwd+bwd, batch 64 of 8x8", digits_step),
    ):
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"  {name:<44} {1e3 * statistics.median(times):9.2f} ms")
    return 0
