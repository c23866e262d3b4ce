"""GPU rows: minicbam on "cuda" vs PyTorch + cuDNN on the same GPU, each in its own process.

    python benchmarks/gpu.py [--only NAME ...] [--rounds 3] [--repeats 10] [--warmup 3]
                             [--json FILE]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu.py --dry-run   # the minicbam side, tiny
                                                                 # shapes, on the simulator

Workloads: ``resnet18_cbam_train_gpu`` (ResNet-18 with CBAM, CIFAR stem, one SGD step with
momentum at batch 64) and ``cbam_fwd_bwd_gpu`` (CBAM(64) forward + backward of
(64, 64, 32, 32)); the models, inputs and PyTorch twins are benchmarks/workloads.py's.
As in benchmarks/run.py, fresh processes alternate minicbam, torch, minicbam, ... over
``--rounds`` rounds, and the table (run.py's format) gives the median of the per-process
medians and ``torch / minicbam`` (above 1: minicbam is faster; the goal is >= 0.3). Each
timed call is bracketed by a device synchronisation (``minicbam.device.synchronize``,
which waits for numba's queue; ``torch.cuda.synchronize``), so a sample is the call's
whole device time. torch runs with cuDNN enabled and ``cudnn.benchmark = True``.

Without a usable GPU (or under the simulator without ``--dry-run``) it prints one line
saying why and exits with status 2.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as harness  # benchmarks/run.py: the table, summaries and environments
import workloads

NAMES = ("resnet18_cbam_train_gpu", "cbam_fwd_bwd_gpu")


# ----------------------------------------------------------------------------- workloads
def describe(name, tiny=False):
    if name == "resnet18_cbam_train_gpu":
        batch = 2 if tiny else 64
        return f"resnet18-cbam cifar train step batch {batch} (cuda)", "img/s", batch
    shape = _cbam_shape(tiny)
    return f"cbam fwd+bwd {shape} (cuda)", "img/s", shape[0]


def _cbam_shape(tiny):
    return (2, 64, 4, 4) if tiny else (64, 64, 32, 32)


def build_minicbam(name, tiny=False):
    """The step callable, everything on "cuda"."""
    import numpy as np

    import minicbam as mc
    from minicbam import models, optim

    mc.manual_seed(0)
    if name == "cbam_fwd_bwd_gpu":
        module = workloads._mc_attention_module("cbam").to("cuda")
        x = mc.tensor(workloads._x(_cbam_shape(tiny)), device="cuda", requires_grad=True)
        return workloads.mc_fwd_bwd(module, x)
    batch, hw = (2, 8) if tiny else (64, 32)
    model = models.resnet18(num_classes=10, attention="cbam", stem="cifar").to("cuda")
    x = mc.tensor(workloads._x((batch, 3, hw, hw)), device="cuda")
    y = mc.tensor(np.arange(batch) % 10, device="cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return workloads.mc_train_step(model.train(), opt, x, y)


def build_torch(torch, name):
    import numpy as np

    torch.manual_seed(0)
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    if name == "cbam_fwd_bwd_gpu":
        module = workloads.torch_modules(torch)["cbam"](64).train().to(dev)
        x = torch.tensor(workloads._x(_cbam_shape(False)), device=dev, requires_grad=True)
        return workloads.torch_fwd_bwd(module, x)
    model = workloads.torch_resnet18_cbam(torch).to(dev)
    x = torch.tensor(workloads._x((64, 3, 32, 32)), device=dev)
    y = torch.tensor(np.arange(64) % 10, device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return workloads.torch_train_step(torch, model.train(), opt, x, y)


# ----------------------------------------------------------------------------- measuring
def time_synced(step, sync, repeats, warmup):
    """Seconds of each of ``repeats`` calls, each between two device synchronisations."""
    for _ in range(warmup):
        step()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def worker(framework, name, repeats, warmup, result_path):
    if framework == "minicbam":
        import minicbam as mc

        step, sync = build_minicbam(name), mc.device.synchronize
        samples = time_synced(step, sync, repeats, warmup)
        env = harness.minicbam_environment()
        env.update(
            gpu=_numba_gpu_name(),
            device_peak_mib=mc.device.max_memory_allocated() / 2**20,
            device_reserved_mib=mc.device.memory_reserved() / 2**20,
        )
    else:
        import torch

        step, sync = build_torch(torch, name), torch.cuda.synchronize
        samples = time_synced(step, sync, repeats, warmup)
        env = harness.torch_environment(torch)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            cudnn=torch.backends.cudnn.version(),
            device_peak_mib=torch.cuda.max_memory_allocated() / 2**20,
            device_reserved_mib=torch.cuda.memory_reserved() / 2**20,
        )
    result = {
        "framework": framework,
        "name": name,
        "samples_s": samples,
        "median_s": statistics.median(samples),
        "peak_rss_mib": harness.rss_mib(),
        "environment": env,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


def _numba_gpu_name():
    from numba import cuda

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def spawn(framework, name, args):
    return harness.run_worker(__file__, framework, name, args.repeats, args.warmup)


# ----------------------------------------------------------------------------- checks
def gpu_problem():
    """None when both frameworks can use a GPU here, else one line saying why not."""
    from numba.core import config

    if config.ENABLE_CUDASIM:
        return "NUMBA_ENABLE_CUDASIM=1 is set: the GPU rows time a real GPU (--dry-run checks)"
    import minicbam as mc

    if not mc.cuda_is_available():
        return f"minicbam cannot use CUDA here: {mc.device.cuda_unavailable_reason()}"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed: the GPU rows compare against torch + cuDNN"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device (a CPU-only build?)"
    return None


def dry_run(names):
    """Build and run each minicbam step twice at tiny shapes (on the simulator, or a GPU)."""
    import minicbam as mc

    for name in names:
        start = time.perf_counter()
        step = build_minicbam(name, tiny=True)
        step()
        step()
        mc.device.synchronize()
        what = describe(name, tiny=True)[0]
        print(f"{name}: ran {what} twice in {time.perf_counter() - start:.1f} s")
    print("caching allocator:", mc.device.memory_stats())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=NAMES, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="processes per framework")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--dry-run", action="store_true", help="minicbam side, tiny shapes")
    parser.add_argument("--worker", choices=harness.FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    names = args.only or list(NAMES)
    if args.worker:
        worker(args.worker, names[0], args.repeats, args.warmup, args.result)
        return 0
    if args.dry_run:
        dry_run(names)
        return 0
    problem = gpu_problem()
    if problem is not None:
        print(f"benchmarks/gpu.py: no GPU rows: {problem}")
        return 2
    print(
        f"separate processes, alternating, {args.rounds} rounds; {args.repeats} synchronised "
        f"calls after {args.warmup} warm-up per process"
    )
    print(harness.HEADER)
    rows, processes = [], []
    for name in names:
        runs = [spawn(fw, name, args) for _ in range(args.rounds) for fw in harness.FRAMEWORKS]
        processes.extend(runs)
        row = harness.summarise(name, describe(name), runs)
        rows.append(row)
        print(harness.format_row(row), flush=True)
    harness.print_environment(processes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:], "results": rows, "processes": processes}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
