"""minicbam vs PyTorch CPU on the same workloads, in one run: medians and ratios.

    python benchmarks/run.py [--quick] [--only NAME ...] [--json FILE] [--threads N]

Each workload builds the same computation in minicbam and (when torch is importable) in
PyTorch with the same shapes and layers, warms both up, then times ``--repeats`` calls of each and
reports the medians and ``torch / minicbam`` (above 1: minicbam is faster). The two are
timed interleaved, one call each per round. Both use the
same number of threads (numba and torch.set_num_threads). The environment that matters
(OPENBLAS_CORETYPE, OMP_WAIT_POLICY, threads, load average) is printed with the table and
stored in the JSON. Speed is measured here, never asserted in tests.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads


def median_seconds(fns, repeats, warmup):
    """Median seconds of each callable. They are timed interleaved (one call of each per
    round), so that both frameworks see the same machine state: the 2-core machine is
    shared, and a burst of other work then slows both instead of one."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def traced_peak_mib(fn):
    """Peak of the arrays one call allocates (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def environment(threads):
    import numba

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "threads": threads,
        "threading_layer": _threading_layer(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "loadavg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return "(not initialised)"


def run(names, repeats, warmup, quick, threads, use_torch):
    import numba

    numba.set_num_threads(threads)
    torch = workloads.import_torch(threads) if use_torch else None
    rows = []
    for name in names:
        case = workloads.CASES[name](quick=quick, torch=torch)
        row = {"name": name, "what": case.what, "unit": case.unit, "per_call": case.per_call}
        fns = [case.minicbam] + ([case.torch] if torch is not None and case.torch else [])
        medians = median_seconds(fns, repeats, warmup)
        row["minicbam_s"] = medians[0]
        if len(medians) == 2:
            row["torch_s"] = medians[1]
            row["ratio"] = row["torch_s"] / row["minicbam_s"]
        row["minicbam_peak_mib"] = traced_peak_mib(case.minicbam)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


COLD_START = (
    "import time; t0 = time.perf_counter(); import numpy as np; import minicbam as mc; "
    "import minicbam.nn as nn; cbam = nn.CBAM(64); "
    "y = cbam(mc.tensor(np.ones((2, 64, 16, 16), np.float32))); "
    "print(time.perf_counter() - t0)"
)


def cold_start(cache_dir):
    """Seconds for import + building a CBAM + its first forward, in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", COLD_START], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def cold_start_rows():
    """Cold start with an empty numba cache (compiles) and with a warm one (loads)."""
    with tempfile.TemporaryDirectory() as cache:
        empty = cold_start(cache)
        warm = statistics.median(cold_start(cache) for _ in range(3))
    for name, seconds in (("cold_start_empty_cache", empty), ("cold_start_warm_cache", warm)):
        row = {
            "name": name,
            "what": "import + CBAM first forward",
            "unit": "",
            "per_call": 0,
            "minicbam_s": seconds,
        }
        print(format_row(row), flush=True)
        yield row


def peak_memory_mb():
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_row(row):
    def cell(seconds):
        if seconds is None:
            return "-"
        rate = row["per_call"] / seconds if row["per_call"] else None
        text = f"{seconds * 1e3:9.2f} ms"
        return text + (f" ({rate:,.0f} {row['unit']})" if rate else "")

    ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
    peak = f"{row['minicbam_peak_mib']:.0f}" if "minicbam_peak_mib" in row else "-"
    return (
        f"{row['name']:<28} {cell(row['minicbam_s']):<34} {cell(row.get('torch_s')):<34} "
        f"{ratio:>7} {peak:>8}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(workloads.CASES), default=None)
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-torch", action="store_true", help="time minicbam alone")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    names = args.only or list(workloads.CASES)
    env = environment(args.threads)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(
        f"{'workload':<28} {'minicbam (median)':<34} {'torch (median)':<34} {'ratio':>7} "
        f"{'peak MiB':>8}"
    )
    rows = run(names, repeats, args.warmup, args.quick, args.threads, not args.no_torch)
    if not args.only:
        rows.extend(cold_start_rows())
    env["threading_layer"] = _threading_layer()
    env["peak_rss_mib"] = peak_memory_mb()
    print(f"peak resident memory of this run: {env['peak_rss_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
