"""Mutation runner: apply each mutant of ``catalogue.py`` in a scratch copy, run its tests.

A mutant is one small, realistic bug (an exact snippet of a source file and its replacement).
For each mutant the runner writes the replacement into a scratch copy of the repository, runs
the mutant's own test files with the CI hypothesis profile, and records the outcome:

- ``killed``: pytest failed (exit status 1) -- some test caught the bug;
- ``error``: pytest could not run the tests (exit status 2-4, e.g. the mutant broke an import),
  also counted as killed but listed apart, since a good mutant should compile;
- ``timeout``: the run took longer than ``--timeout`` (counted as killed, listed apart);
- ``survived``: every selected test passed;
- ``not applicable``: the original snippet is missing from the file (or occurs more than once),
  so the mutant was not applied; reported, never counted as killed.

Each mutant runs twice: with the CUDA simulator on (the default test command) and with
``NUMBA_ENABLE_CUDASIM=0`` (CPU only; without a GPU the CUDA tests then skip).

Usage (from the repository root, the project's virtual environment active)::

    python tests/mutation/run.py                 # every mutant, both modes, one job
    python tests/mutation/run.py --only pool-max-tie-last gemm-k-tail
    python tests/mutation/run.py --cpu-only      # only the simulator-off mode
    python tests/mutation/run.py --jobs 2        # two scratch copies side by side

Results go to ``tests/mutation/results.json`` and ``tests/mutation/RESULTS.md`` (``--out``).
"""

import argparse
import datetime
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from catalogue import MUTANTS, NOTES

MODES = {"sim": "1", "cpu": "0"}
_IGNORED_ANYWHERE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", "*.egg-info"
)
_IGNORED_AT_ROOT = {"runs", "data"}  # training outputs and downloads; minicbam/data is code


def ignored(folder, names):
    """copytree's ignore: caches everywhere, the root's ``runs``/``data`` folders."""
    skip = set(_IGNORED_ANYWHERE(folder, names))
    if os.path.abspath(folder) == ROOT:
        skip |= _IGNORED_AT_ROOT & set(names)
    return skip


KILLED = ("killed", "error", "timeout")


def make_scratch(parent, k):
    """A copy of the repository's sources and tests, with its own numba cache folder.

    The copy keeps every file's mtime, so a scratch folder kept between runs (``--scratch``)
    keeps its compiled numba cache for the files no mutant touches."""
    path = os.path.join(parent, f"scratch-{k}")
    for sub in ("minicbam", "tests"):
        shutil.rmtree(os.path.join(path, sub), ignore_errors=True)
    shutil.copytree(ROOT, path, ignore=ignored, symlinks=True, dirs_exist_ok=True)
    os.makedirs(os.path.join(path, ".numba-cache"), exist_ok=True)
    return path


def apply(scratch, mutant, serial):
    """Write the mutant into ``scratch``; returns the original bytes and stat, or a reason."""
    path = os.path.join(scratch, mutant["file"])
    if not os.path.exists(path):
        return None, f"file {mutant['file']} is missing"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    count = text.count(mutant["original"])
    if count != 1:
        return None, f"original snippet found {count} times in {mutant['file']}"
    stat = os.stat(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutant["original"], mutant["replacement"]))
    # numba's cache is keyed by the source file's mtime and size: give every mutant its own
    # mtime (now, later than any earlier mutant's), so that no compiled entry of the original
    # or of another mutant is reused.
    stamp = max(time.time(), stat.st_mtime + 1.0) + 1e-3 * serial
    os.utime(path, (stamp, stamp))
    return (path, text, stat), None


def restore(saved):
    path, text, stat = saved
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def run_tests(scratch, tests, mode, timeout, select=None, marker=None):
    """pytest on ``tests`` (files or node ids) in ``scratch``, ``-k select`` if given; returns
    (outcome, seconds, last lines, node id of the first failure or None)."""
    shutil.rmtree(os.path.join(scratch, ".hypothesis"), ignore_errors=True)
    failures = os.path.join(scratch, ".mutation-failures.jsonl")
    if os.path.exists(failures):
        os.remove(failures)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([scratch, os.path.join(scratch, "tests", "mutation")]),
        MUTATION_FAILURES=failures,
        HYPOTHESIS_PROFILE="ci",
        NUMBA_ENABLE_CUDASIM=MODES[mode],
        NUMBA_CACHE_DIR=os.path.join(scratch, ".numba-cache"),
        OMP_WAIT_POLICY="PASSIVE",
    )
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "failure_report", *tests]
    if select:
        cmd += ["-k", select]
    if marker:
        cmd += ["-m", marker]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, check=False, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, "", None
    seconds = time.monotonic() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    tail = "\n".join(lines[-3:])
    failed = []
    if os.path.exists(failures):
        with open(failures, encoding="utf-8") as f:
            failed = [json.loads(line) for line in f if line.strip()]
    if proc.returncode == 0:
        outcome = "survived"
    elif proc.returncode == 1:
        outcome = "killed"
    elif proc.returncode == 5:
        outcome = "no tests"
    else:
        outcome = "error"
    return outcome, seconds, tail, (failed[0] if failed else None)  # {"nodeid", "cuda"}


def check_scratch(scratch):
    """The scratch copy imports its own minicbam, not the editable install's."""
    env = dict(os.environ, PYTHONPATH=scratch, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run(
        [sys.executable, "-c", "import minicbam; print(minicbam.__file__)"],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out.startswith(scratch):
        raise SystemExit(f"scratch copy imports {out}, not its own minicbam")


def cuda_only(mutant):
    return mutant["description"].startswith("[cuda]")


def run_mode(scratch, mutant, mode, timeout, first_failure, infer):
    """One mode's record. A test that failed in the other mode is run first (a cheap
    confirmation: the CI profile is derandomized, so it draws the same examples); when it
    passes here, the mutant's whole selection runs. With ``infer`` (CPU-only mode), a
    failure of a test not marked ``cuda`` is not re-run but recorded as inferred: that test
    runs no CUDA code, so the simulator setting cannot change its outcome."""
    if first_failure and infer and mode == "cpu" and not first_failure["cuda"]:
        return {
            "outcome": "killed",
            "seconds": 0.0,
            "tail": "",
            "failed": first_failure,
            "inferred_from": first_failure["nodeid"],
        }
    if first_failure:
        node = first_failure["nodeid"]
        outcome, seconds, tail, failed = run_tests(scratch, [node], mode, timeout)
        if outcome in KILLED:
            return {
                "outcome": outcome,
                "seconds": round(seconds, 1),
                "tail": tail,
                "failed": failed,
                "rerun_of": node,
            }
    # a body that only CUDA kernels run can fail only tests that run CUDA kernels
    marker = "cuda" if cuda_only(mutant) else None
    outcome, seconds, tail, failed = run_tests(
        scratch, mutant["tests"], mode, timeout, mutant.get("select"), marker
    )
    return {"outcome": outcome, "seconds": round(seconds, 1), "tail": tail, "failed": failed}


def run_mutant(scratch, mutant, serial, modes, timeout, infer):
    record = {key: mutant[key] for key in ("id", "file", "description", "tests")}
    record["select"] = mutant.get("select")
    saved, reason = apply(scratch, mutant, serial)
    if saved is None:
        record.update(status="not applicable", reason=reason)
        return record
    try:
        first_failure = None
        for mode in modes:
            if mode == "cpu" and cuda_only(mutant):
                # Without a GPU and without the simulator no CUDA kernel runs: out of reach.
                record[mode] = {"outcome": "cuda only", "seconds": 0.0, "tail": "", "failed": None}
                continue
            record[mode] = run_mode(scratch, mutant, mode, timeout, first_failure, infer)
            first_failure = record[mode]["failed"]
    finally:
        restore(saved)
    record["status"] = "applied"
    return record


def worker(scratches, jobs, results, modes, timeout, lock, progress, infer):
    scratch = scratches.get()
    while True:
        try:
            serial, mutant = jobs.get_nowait()
        except queue.Empty:
            return
        record = run_mutant(scratch, mutant, serial, modes, timeout, infer)
        with lock:
            results.append(record)
            progress(results)
            summary = " ".join(
                f"{m}={record[m]['outcome']}({record[m]['seconds']}s)" for m in modes if m in record
            )
            print(f"[{len(results)}] {mutant['id']}: {record.get('reason', summary)}", flush=True)


def write_results(out, previous, results, ids, modes, command, started, t0):
    wall = time.monotonic() - t0
    results = list(results)
    if previous:
        fresh = {r["id"] for r in results}
        known = set(ids)
        results += [r for r in previous["results"] if r["id"] not in fresh and r["id"] in known]
        command = f"{previous['command']} ; then {command}"
        wall += previous.get("wall_s", 0)
    payload = {"command": command, "date": started, "wall_s": round(wall), "results": results}
    write_atomically(os.path.join(out, "results.json"), json.dumps(payload, indent=1))
    text = markdown(results, modes, command.strip(), started, wall)
    write_atomically(os.path.join(out, "RESULTS.md"), text)


def write_atomically(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def score(results, mode, reachable_only=False):
    applied = [r for r in results if r["status"] == "applied" and mode in r]
    if reachable_only:
        applied = [r for r in applied if r[mode]["outcome"] != "cuda only"]
    killed = [r for r in applied if r[mode]["outcome"] in KILLED]
    return len(killed), len(applied)


def short_command(command):
    """The command with each long ``--only`` list replaced by its length."""
    parts, out, k = command.split(" "), [], 0
    while k < len(parts):
        out.append(parts[k])
        if parts[k] == "--only":
            ids = []
            while k + 1 < len(parts) and not parts[k + 1].startswith("-") and parts[k + 1] != ";":
                k += 1
                ids.append(parts[k])
            out.append(" ".join(ids) if len(ids) <= 4 else f"<{len(ids)} ids>")
        k += 1
    return " ".join(out)


def markdown(results, modes, command, started, wall):
    order = {m["id"]: i for i, m in enumerate(MUTANTS)}
    results = sorted(results, key=lambda r: order[r["id"]])
    lines = [
        "# Mutation results",
        "",
        f"Command: `{short_command(command)}`  ",
        f"Date: {started} (UTC), wall time {wall / 60:.1f} min.",
        "",
    ]
    for mode in modes:
        killed, applied = score(results, mode)
        pct = 100.0 * killed / applied if applied else 0.0
        name = "simulator on" if mode == "sim" else "CPU only (NUMBA_ENABLE_CUDASIM=0)"
        lines.append(f"- {name}: **{killed} / {applied} killed ({pct:.1f}%)**")
        if mode == "cpu":
            killed, reach = score(results, mode, reachable_only=True)
            pct = 100.0 * killed / reach if reach else 0.0
            lines.append(
                f"- CPU only, mutants whose body runs on the CPU ({applied - reach} CUDA-only "
                f"mutants are out of reach without a GPU): **{killed} / {reach} killed ({pct:.1f}%)**"
            )
    skipped = [r for r in results if r["status"] != "applied"]
    lines.append(f"- not applicable (snippet missing, not counted): {len(skipped)}")
    provenance = os.path.join(HERE, "PROVENANCE.md")
    if os.path.exists(provenance):  # which tree and which run each group of records came from
        with open(provenance, encoding="utf-8") as f:
            lines += ["", f.read().strip()]
    lines += [
        "",
        "| id | file | " + " | ".join(modes) + " | description |",
        "|---" * (3 + len(modes)) + "|",
    ]
    for r in results:
        cells = []
        for mode in modes:
            if mode in r and r[mode].get("inferred_from"):
                cells.append("killed (inferred)")
            elif mode in r:
                cells.append(f"{r[mode]['outcome']} ({r[mode]['seconds']:.0f}s)")
            else:
                cells.append(r.get("status", "-"))
        lines.append(
            f"| {r['id']} | {r['file']} | " + " | ".join(cells) + f" | {r['description']} |"
        )
    survivors = [
        r for r in results if any(r.get(m, {}).get("outcome") == "survived" for m in modes)
    ]
    if survivors:
        lines += ["", "## Survivors", ""]
        for r in survivors:
            lost = [m for m in modes if r.get(m, {}).get("outcome") == "survived"]
            note = NOTES.get(r["id"], "no reason recorded yet")
            lines.append(f"- `{r['id']}` ({', '.join(lost)}): {r['description']}. {note}")
    if skipped:
        lines += ["", "## Not applicable", ""]
        lines += [f"- `{r['id']}`: {r['reason']}" for r in skipped]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--skip", nargs="+", metavar="ID", default=[], help="leave these out")
    parser.add_argument("--cpu-only", action="store_true", help="only NUMBA_ENABLE_CUDASIM=0")
    parser.add_argument("--sim-only", action="store_true", help="only the simulator-on mode")
    parser.add_argument("--jobs", type=int, default=1, help="scratch copies run side by side")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--out", default=HERE, help="folder for results.json and RESULTS.md")
    parser.add_argument(
        "--scratch",
        help="folder for the scratch copies, kept afterwards with their numba caches "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    parser.add_argument(
        "--infer-cpu",
        action="store_true",
        help="CPU-only mode: take a simulator-mode failure of a test not marked cuda as a kill "
        "without re-running it (recorded as inferred)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other mutants' records of results.json"
    )
    args = parser.parse_args(argv)

    ids = [m["id"] for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutant ids in the catalogue")
    if args.list:
        for m in MUTANTS:
            print(f"{m['id']:28s} {m['file']:36s} {m['description']}")
        return 0
    chosen = MUTANTS
    if args.only:
        unknown = set(args.only) - set(ids)
        if unknown:
            raise SystemExit(f"unknown mutant ids: {sorted(unknown)}")
        by_id = {m["id"]: m for m in MUTANTS}
        chosen = [by_id[i] for i in dict.fromkeys(args.only)]  # in the order given
    chosen = [m for m in chosen if m["id"] not in args.skip]
    modes = ["cpu"] if args.cpu_only else ["sim"] if args.sim_only else ["sim", "cpu"]

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    command = "python tests/mutation/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    json_path = os.path.join(args.out, "results.json")
    previous = None
    if args.merge and os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            previous = json.load(f)

    def progress(results):
        """Write the results so far (a long run can be stopped and still reports)."""
        write_results(args.out, previous, results, ids, modes, command, started, t0)

    parent = args.scratch or tempfile.mkdtemp(prefix="minicbam-mutation-")
    try:
        scratches = queue.Queue()
        for k in range(max(1, args.jobs)):
            path = make_scratch(parent, k)
            check_scratch(path)
            scratches.put(path)
        jobs = queue.Queue()
        for serial, mutant in enumerate(chosen):
            jobs.put((serial, mutant))
        results, lock = [], threading.Lock()
        threads = [
            threading.Thread(
                target=worker,
                args=(
                    scratches,
                    jobs,
                    results,
                    modes,
                    args.timeout,
                    lock,
                    progress,
                    args.infer_cpu,
                ),
            )
            for _ in range(max(1, args.jobs))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if not args.scratch:
            shutil.rmtree(parent, ignore_errors=True)
    write_results(args.out, previous, results, ids, modes, command, started, t0)

    for mode in modes:
        killed, applied = score(results, mode)
        reach = score(results, mode, reachable_only=True)
        print(f"{mode}: {killed}/{applied} killed; {reach[0]}/{reach[1]} of the reachable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
