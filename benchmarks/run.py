"""minicbam vs PyTorch CPU, each framework in its own process with its own defaults.

    python benchmarks/run.py [--quick] [--only NAME ...] [--rounds 3] [--json FILE]
    python benchmarks/run.py --in-process ...   # both in one process (not a fair comparison)

For every workload (benchmarks/workloads.py) the harness starts fresh processes that
alternate minicbam, torch, minicbam, torch, ... over ``--rounds`` rounds. Each process builds
its workload, warms it up (``--warmup`` calls), times ``--repeats`` calls and reports its own
median and its peak resident memory (RSS high-water mark). The table gives the median of the
per-process medians, their spread (min-max) and the ratio ``torch / minicbam`` (above 1:
minicbam is faster), then peak RSS, page faults per call and the cores each framework got
(CPU seconds per wall second of its timed calls: on a shared host whose vCPUs are taken
away at times, a framework that waits for its threads gets fewer).

Fairness rules: the minicbam process is set up by ``import minicbam`` alone (which sets
OMP_WAIT_POLICY=PASSIVE for itself); the torch process never imports minicbam, and its only
setting is ``torch.set_num_threads(N)`` with N the minicbam process's thread count. Neither
process gets any other environment change from the harness. Each process reports the
environment it saw (threads, threading layer, OMP_WAIT_POLICY, OPENBLAS_*, load average,
versions); it is printed and stored in --json. Speed is measured here, never asserted in tests.
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

HERE = os.path.dirname(os.path.abspath(__file__))
FRAMEWORKS = ("minicbam", "torch")
ENV_VARS = (
    "OMP_WAIT_POLICY",
    "OMP_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
)


# ----------------------------------------------------------------------------- measuring
def time_calls(fn, repeats, warmup, usage=None):
    """Seconds of each of ``repeats`` calls, after ``warmup`` untimed calls.

    When ``usage`` is a dict, it receives the timed calls' cost per call from getrusage:
    minor page faults (a first touch of fresh memory), user and system CPU seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    if usage is not None:
        after = resource.getrusage(resource.RUSAGE_SELF)
        usage["timed_s"] = sum(samples)  # the wall time the CPU figures cover
        usage["minor_faults_per_call"] = (after.ru_minflt - before.ru_minflt) / repeats
        usage["user_cpu_s_per_call"] = (after.ru_utime - before.ru_utime) / repeats
        usage["sys_cpu_s_per_call"] = (after.ru_stime - before.ru_stime) / repeats
    return samples


def rss_mib():
    """Peak resident memory of this process so far (MiB; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpuinfo_field(name):
    """The value of the first ``name: value`` line of /proc/cpuinfo ("" if none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_model():
    return cpuinfo_field("model name") or platform.processor() or "(unknown)"


def cpu_family_model():
    """"family/model" from /proc/cpuinfo (e.g. 23/1, an AMD Zen 1): the same model name and
    vector ISA can be CPUs of different generations and speeds; "" where not reported."""
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    return f"{family}/{model}" if family and model else ""


def cpu_vector_isa():
    """The widest x86 vector extension the CPU reports (avx512f, avx2, ...): hosts that share
    a model name ("AMD EPYC") differ in it, and with it PyTorch's oneDNN kernels; "" when
    /proc/cpuinfo says none of these."""
    flags = cpuinfo_field("flags").split()
    return next((isa for isa in ("avx512f", "avx2", "avx", "sse4_2") if isa in flags), "")


def base_environment():
    """What every process reports about the machine and the variables it saw."""
    env = {name: os.environ.get(name, "(unset)") for name in ENV_VARS}
    env.update(
        python=platform.python_version(),
        cpu=cpu_model(),
        cpu_isa=cpu_vector_isa(),
        cpu_family_model=cpu_family_model(),
        cpu_count=os.cpu_count(),
        loadavg=list(os.getloadavg()),
    )
    return env


def minicbam_environment():
    import numba
    import numpy as np

    import minicbam

    env = base_environment()  # after `import minicbam`: what it set for itself is included
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        layer = "(not initialised)"
    env.update(
        minicbam=minicbam.__version__,
        numpy=np.__version__,
        numba=numba.__version__,
        threads=numba.get_num_threads(),
        threading_layer=layer,
    )
    return env


def torch_environment(torch):
    import numpy as np

    env = base_environment()
    info = torch.__config__.parallel_info().splitlines()
    backend = [line for line in info if line.startswith("ATen parallel backend")]
    env.update(
        torch=torch.__version__,
        numpy=np.__version__,
        threads=torch.get_num_threads(),
        threading_layer=backend[0].split(":", 1)[1].strip() if backend else "(unknown)",
    )
    return env


def build(framework, name, quick, threads):
    """(step callable, framework module) for one workload in this process."""
    sys.path.insert(0, HERE)
    import workloads

    workload = workloads.WORKLOADS[name]
    if framework == "minicbam":
        import numba

        import minicbam

        if threads:
            numba.set_num_threads(threads)
        return workload.minicbam(quick), minicbam
    import torch

    torch.set_num_threads(threads)
    return workload.torch(torch, quick), torch


def worker(framework, name, quick, threads, repeats, warmup, result_path):
    """One process's share: build, warm up, time; write the result as JSON."""
    loadavg_start = os.getloadavg()
    step, module = build(framework, name, quick, threads)
    rss_built = rss_mib()
    usage = {}
    samples = time_calls(step, repeats, warmup, usage)
    env = minicbam_environment() if framework == "minicbam" else torch_environment(module)
    env["loadavg_start"] = list(loadavg_start)
    result = {
        "framework": framework,
        "name": name,
        "samples_s": samples,
        "median_s": statistics.median(samples),
        **usage,
        "rss_after_build_mib": rss_built,
        "peak_rss_mib": rss_mib(),
        "environment": env,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


def spawn(framework, name, args, threads):
    """Run one worker process; its result dict."""
    extra = ["--threads", str(threads or 0)] + (["--quick"] if args.quick else [])
    return run_worker(__file__, framework, name, args.repeats, args.warmup, extra)


def run_worker(script, framework, name, repeats, warmup, extra=()):
    """Run ``script --worker framework --only name ...`` in a fresh process with the
    caller's environment unchanged; the result dict it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(script), "--worker", framework, "--only", name]
        cmd += ["--repeats", str(repeats), "--warmup", str(warmup), *extra, "--result", path]
        subprocess.run(cmd, check=True, env=dict(os.environ))
        with open(path) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- separate
def summarise(name, describe, runs):
    """Median of per-process medians, spread, ratio and peak RSS per framework."""
    what, unit, per_call = describe
    row = {"name": name, "what": what, "unit": unit, "per_call": per_call, "mode": "separate"}
    for fw in FRAMEWORKS:
        mine = [r for r in runs if r["framework"] == fw]
        if not mine:
            continue
        medians = [r["median_s"] for r in mine]
        row[f"{fw}_s"] = statistics.median(medians)
        row[f"{fw}_spread_s"] = [min(medians), max(medians)]
        row[f"{fw}_process_medians_s"] = medians
        row[f"{fw}_peak_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
        for key in ("minor_faults_per_call", "user_cpu_s_per_call", "sys_cpu_s_per_call"):
            if all(key in r for r in mine):
                row[f"{fw}_{key}"] = statistics.median(r[key] for r in mine)
        if all("timed_s" in r for r in mine):
            row[f"{fw}_cores"] = _cores(mine)
    if "torch_s" in row:
        row["ratio"] = row["torch_s"] / row["minicbam_s"]
        per_round = [
            t["median_s"] / m["median_s"]
            for m, t in zip(
                [r for r in runs if r["framework"] == "minicbam"],
                [r for r in runs if r["framework"] == "torch"],
            )
        ]
        row["ratio_per_round"] = per_round
    return row


def run_separate(names, args, workloads):
    rows, processes = [], []
    frameworks = ("minicbam",) if args.no_torch else FRAMEWORKS
    for name in names:
        runs = []
        threads = args.threads
        for _ in range(args.rounds):
            for fw in frameworks:
                result = spawn(fw, name, args, threads)
                if fw == "minicbam" and not threads:
                    threads = result["environment"]["threads"]  # torch gets minicbam's count
                runs.append(result)
        processes.extend(runs)
        row = summarise(name, workloads.WORKLOADS[name].describe(args.quick), runs)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows, processes


# ----------------------------------------------------------------------------- in-process
def run_in_process(names, args, workloads):
    """Both frameworks in THIS process, timed interleaved (one call of each per round).

    Not a fair comparison: torch shares the process (and minicbam's OMP_WAIT_POLICY=PASSIVE)
    with numba's and OpenBLAS's thread pools. Kept to look at interactions between them."""
    import numba

    import minicbam  # noqa: F401  (sets its environment before torch loads OpenMP)

    threads = args.threads or numba.get_num_threads()
    numba.set_num_threads(threads)
    torch = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(threads)
    rows = []
    for name in names:
        workload = workloads.WORKLOADS[name]
        fns = [workload.minicbam(args.quick)] + (
            [workload.torch(torch, args.quick)] if torch else []
        )
        for _ in range(args.warmup):
            for fn in fns:
                fn()
        samples = [[] for _ in fns]
        for _ in range(args.repeats):
            for fn, times in zip(fns, samples):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        what, unit, per_call = workload.describe(args.quick)
        row = {
            "name": name,
            "what": what,
            "unit": unit,
            "per_call": per_call,
            "mode": "in-process",
            "minicbam_s": statistics.median(samples[0]),
        }
        if torch:
            row["torch_s"] = statistics.median(samples[1])
            row["ratio"] = row["torch_s"] / row["minicbam_s"]
        rows.append(row)
        print(format_row(row), flush=True)
    env = minicbam_environment()
    if torch:
        env["torch"] = torch.__version__
    env["peak_rss_mib_both"] = rss_mib()
    return rows, [{"framework": "both", "environment": env}]


# ----------------------------------------------------------------------------- cold start
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
            "mode": "separate",
            "minicbam_s": seconds,
        }
        print(format_row(row), flush=True)
        yield row


# ----------------------------------------------------------------------------- output
HEADER = (
    f"{'workload':<24} {'minicbam median [min-max]':<38} {'torch median [min-max]':<38} "
    f"{'ratio':>6} {'peak RSS MiB mc/torch':>22} {'faults/call mc/torch':>21}"
    f" {'cores mc/torch':>15}"
)


def format_row(row):
    def cell(fw):
        seconds = row.get(f"{fw}_s")
        if seconds is None:
            return "-"
        text = f"{seconds * 1e3:.1f} ms"
        if f"{fw}_spread_s" in row:
            lo, hi = row[f"{fw}_spread_s"]
            text += f" [{lo * 1e3:.1f}-{hi * 1e3:.1f}]"
        if row["per_call"]:
            text += f" ({row['per_call'] / seconds:,.0f} {row['unit']})"
        return text

    ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
    peaks = [row.get(f"{fw}_peak_rss_mib") for fw in FRAMEWORKS]
    peak = "/".join("-" if p is None else f"{p:.0f}" for p in peaks)
    faults = [row.get(f"{fw}_minor_faults_per_call") for fw in FRAMEWORKS]
    fault = "/".join("-" if f is None else f"{f:.0f}" for f in faults)
    cores = "/".join(
        "-" if row.get(f"{fw}_cores") is None else f"{row[f'{fw}_cores']:.2f}" for fw in FRAMEWORKS
    )
    return (
        f"{row['name']:<24} {cell('minicbam'):<38} {cell('torch'):<38} {ratio:>6} {peak:>22}"
        f" {fault:>21} {cores:>15}"
    )


def _cores(runs):
    """CPU seconds per wall second over a framework's timed calls (user + system, all
    threads, every process): how many of the machine's cores it got. PyTorch's OpenMP
    threads spin while they wait, so its figure counts waiting too; a parallel region that
    waits for a descheduled thread shows up as fewer cores. None when the timed calls add up
    to under 0.1 s (the kernel's CPU accounting is too coarse for them)."""
    timed = sum(r["timed_s"] for r in runs)
    if timed < 0.1:
        return None
    cpu = sum(
        (r["user_cpu_s_per_call"] + r["sys_cpu_s_per_call"]) * len(r["samples_s"]) for r in runs
    )
    return cpu / timed


def print_environment(processes):
    """One line per distinct environment the processes reported (load averages vary)."""
    seen = set()
    for proc in processes:
        env = {k: v for k, v in proc["environment"].items() if not k.startswith("loadavg")}
        key = (proc["framework"], json.dumps(env, sort_keys=True))
        if key not in seen:
            seen.add(key)
            print(f"[{proc['framework']}] " + " ".join(f"{k}={v}" for k, v in env.items()))
    loads = [p["environment"]["loadavg"][0] for p in processes]
    print(f"1-min load average seen by the processes: {min(loads):.2f}-{max(loads):.2f}")


def parse_args(argv, names):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=names, default=None)
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument("--rounds", type=int, default=3, help="processes per framework (>= 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="minicbam's thread count (default: its own); torch gets the same",
    )
    parser.add_argument("--no-torch", action="store_true", help="time minicbam alone")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="both frameworks in one process, interleaved (NOT a fair comparison)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    return args


def main(argv=None):
    sys.path.insert(0, HERE)
    import workloads

    args = parse_args(argv, sorted(workloads.WORKLOADS))
    if args.worker:
        worker(
            args.worker,
            args.only[0],
            args.quick,
            args.threads,
            args.repeats,
            args.warmup,
            args.result,
        )
        return 0
    names = args.only or list(workloads.WORKLOADS)
    if os.environ.get("OMP_WAIT_POLICY"):
        print(
            f"note: OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} is set in this shell; "
            "both processes inherit it"
        )
    mode = (
        "IN-PROCESS (both in one process: not a fair comparison)"
        if args.in_process
        else (f"separate processes, alternating, {args.rounds} rounds")
    )
    print(f"mode: {mode}; {args.repeats} timed calls after {args.warmup} warm-up per process")
    print(HEADER)
    run = run_in_process if args.in_process else run_separate
    rows, processes = run(names, args, workloads)
    if not args.only and not args.in_process:
        rows.extend(cold_start_rows())
    print_environment(processes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"mode": mode, "argv": sys.argv[1:], "results": rows, "processes": processes},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
