"""Where a first run's time goes: numba compile events of ``minicbam train`` per function.

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/compile_profile.py --epochs 1 --top 25
    python benchmarks/compile_profile.py ...     # again, same NUMBA_CACHE_DIR: the warm run

Runs the README's training command in this process with a listener on numba's
``numba:compile`` events. A function's *self* time is its compile event's process CPU time
minus that of the compile events nested in it (callees compile inside their callers), so the
self times add up to the compile time of the run. CPU time, not wall time: on a shared machine
it moves far less with the load. On a warm cache a run should show no minicbam compile events.
"""

import argparse
import collections
import resource
import sys
import tempfile
import time

from numba.core import event


class SelfTimes(event.Listener):
    """(function, self CPU seconds, argument types) per compile event."""

    def __init__(self):
        self.stack, self.events = [], []

    def on_start(self, ev):
        self.stack.append([time.process_time(), 0.0])

    def on_end(self, ev):
        start, nested = self.stack.pop()
        spent = time.process_time() - start
        if self.stack:
            self.stack[-1][1] += spent
        fn = ev.data["dispatcher"].py_func
        self.events.append((f"{fn.__module__}.{fn.__qualname__}", spent - nested, ev.data["args"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--signatures", action="store_true", help="one line per compile event")
    args = parser.parse_args()
    listener = SelfTimes()
    event.register("numba:compile", listener)
    out = tempfile.mkdtemp(prefix="compile-profile-")
    start = time.perf_counter()
    from minicbam.app.cli import main as cli

    sys.argv = ["minicbam", "train", "--epochs", str(args.epochs), "--out", out, "--overwrite"]
    try:
        cli()
    except SystemExit:
        pass
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    events = listener.events
    total = sum(dt for _, dt, _ in events)
    ours = sum(1 for name, _, _ in events if name.startswith("minicbam."))
    print(
        f"wall {wall:.1f} s, process CPU {usage.ru_utime + usage.ru_stime:.1f} s; "
        f"{len(events)} compile events ({ours} of minicbam functions), self CPU {total:.1f} s"
    )
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for name, dt, _ in events:
        by_name[name][0] += 1
        by_name[name][1] += dt
    for name, (count, dt) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{dt:7.2f} s {count:3d}  {name}")
    if args.signatures:
        for name, dt, types in sorted(events, key=lambda e: -e[1]):
            print(f"{dt:6.2f} s  {name} {types}")


if __name__ == "__main__":
    main()
