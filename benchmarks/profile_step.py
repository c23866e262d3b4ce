"""Where a workload's step spends its time: wall time per Function (forward and backward,
inclusive, Conv2d split by algorithm) and per CPU Kernel (wrapping ``Kernel.call_cpu`` and
the serial twins that small elementwise calls reach through ``Kernel.cpu_for``; kernels
called from task-pool threads overlap, so their sum can exceed the step). It also counts the
small calls that switch numba's thread count around a kernel without a serial twin
(``device._run_single_threaded``, ~5-10 us each).

    PYTHONPATH=$PWD python benchmarks/profile_step.py resnet18_cbam_train --steps 3

Timings are wall clock on whatever the machine is doing: compare rows within one run (the
shares), not figures between runs. Call counts are exact.
"""

import argparse
import collections
import time

import workloads


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _timed_method(cls, meth, times, counts):  # keyed by the instance's class
    orig = cls.__dict__[meth]

    def timed(self, *args):
        t0 = time.perf_counter()
        out = orig(self, *args)
        alg = getattr(self, "algorithm", None)
        key = f"{type(self).__name__}.{meth}" + (f"[{alg}]" if alg else "")
        times[key] += time.perf_counter() - t0
        counts[key] += 1
        return out

    return orig, timed


def _timed_kernel(orig, times, counts):
    def timed(self, *args):
        t0 = time.perf_counter()
        out = orig(self, *args)
        times[self.name] += time.perf_counter() - t0
        counts[self.name] += 1
        return out

    return timed


def _timed_cpu_for(orig, times, counts):
    """Kernel.cpu_for that times the serial twins it hands out (call_cpu is timed apart)."""

    def cpu_for(self, size):
        run = orig(self, size)
        if run is not self.serial_cpu:
            return run

        def timed(*args):
            t0 = time.perf_counter()
            out = run(*args)
            times[self.name] += time.perf_counter() - t0
            counts[self.name] += 1
            return out

        return timed

    return cpu_for


def _counted_switch(orig, counts):
    def run_single_threaded(fn, out, args):
        counts[getattr(fn, "__name__", repr(fn))] += 1
        return orig(fn, out, args)

    return run_single_threaded


def _report(title, times, counts, steps, top):
    print(f"{title}: {sum(times.values()) / steps * 1e3:.1f} ms per step in all rows")
    for key, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {t / steps * 1e3:9.2f} ms  {counts[key] // steps:5d} calls  {key}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(workloads.WORKLOADS))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps after 2 warm-up")
    parser.add_argument("--quick", action="store_true", help="the workload's small shapes")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    from minicbam import device
    from minicbam.function import Function

    step = workloads.WORKLOADS[args.workload].minicbam(args.quick)
    for _ in range(2):
        step()
    ftimes, fcounts = collections.defaultdict(float), collections.Counter()
    ktimes, kcounts = collections.defaultdict(float), collections.Counter()
    saved = []
    for cls in set(_subclasses(Function)):
        for meth in ("forward", "backward"):
            if meth in cls.__dict__:
                orig, timed = _timed_method(cls, meth, ftimes, fcounts)
                saved.append((cls, meth, orig))
                setattr(cls, meth, timed)
    call_cpu, cpu_for = device.Kernel.call_cpu, device.Kernel.cpu_for
    switch, switches = device._run_single_threaded, collections.Counter()
    device.Kernel.call_cpu = _timed_kernel(call_cpu, ktimes, kcounts)
    device.Kernel.cpu_for = _timed_cpu_for(cpu_for, ktimes, kcounts)
    device._run_single_threaded = _counted_switch(switch, switches)
    t0 = time.perf_counter()
    try:
        for _ in range(args.steps):
            step()
    finally:
        device.Kernel.call_cpu, device.Kernel.cpu_for = call_cpu, cpu_for
        device._run_single_threaded = switch
        for cls, meth, orig in saved:
            setattr(cls, meth, orig)
    print(f"{args.workload}: {(time.perf_counter() - t0) / args.steps * 1e3:.1f} ms per step")
    _report("Functions (inclusive)", ftimes, fcounts, args.steps, args.top)
    _report("CPU kernels", ktimes, kcounts, args.steps, args.top)
    per_step = ", ".join(f"{name} {n / args.steps:g}" for name, n in switches.most_common())
    print(f"thread-count switches per step: {sum(switches.values()) / args.steps:g} ({per_step})")


if __name__ == "__main__":
    main()
