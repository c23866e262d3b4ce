"""Data-parallel figures: allreduce bandwidth by message size, and training-step time of the
digits CNN and of ResNet18/50-CBAM with 1 or N processes (docs/distributed.md uses them).

    python benchmarks/bench_distributed.py step --model digits          # 1 process
    mpiexec -n 2 python benchmarks/bench_distributed.py step --model digits
    mpiexec -n 2 python benchmarks/bench_distributed.py allreduce
    python benchmarks/bench_distributed.py step --model resnet18 --batch 8 --steps 3

``step`` times forward + backward + optimiser step of the *global* batch ``--batch``
(split over the processes), min and median over ``--steps`` steps after one warm-up, and
reports ``wait``: the time DDP spent waiting for reductions backward had not finished
(what the overlap failed to hide), next to ``allreduce_alone_s``, one blocking allreduce of
all the gradients, and ``hidden_fraction`` = 1 - wait / alone. ``--no-ddp`` times the step of one process without DDP.
Each process uses ``--threads`` numba/OpenBLAS threads (default: cores / processes).
Rank 0 prints one JSON line per figure; ``--json FILE`` appends them to FILE.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


def _env_threads():
    """Threads per process, set before numpy/numba load (cores shared by the processes)."""
    ranks = 1
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            ranks = int(os.environ[name])
            break
    threads = "1"
    if "--threads" in sys.argv:
        threads = sys.argv[sys.argv.index("--threads") + 1]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // ranks))
    os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = threads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return ranks, int(threads)


RANKS, THREADS = _env_threads()

import numpy as np

import minicbam as mc
import minicbam.distributed as dist
import minicbam.nn.functional as F
from minicbam import models, nn, optim
from minicbam.nn.parallel import DistributedDataParallel


def _emit(record, path):
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    record.update(processes=RANKS, threads_per_process=THREADS)
    line = json.dumps(record)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def bench_allreduce(args):
    from mpi4py import MPI

    comm = dist.default_group().comm
    n = comm.Get_size()
    for exp in range(8, 27, 2):  # 256 B .. 64 MiB of float32
        nbytes = 2**exp
        buf = np.ones(nbytes // 4, np.float32)
        repeat = max(3, min(50, 2**26 // nbytes))
        comm.Allreduce(MPI.IN_PLACE, buf)  # warm-up
        times = []
        for _ in range(repeat):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf)
            times.append(time.perf_counter() - t0)
        worst = max(comm.allgather(min(times)))  # a collective ends when its slowest rank does
        _emit(
            {
                "bench": "allreduce",
                "bytes": nbytes,
                "min_s": worst,
                "algbw_GBps": nbytes / worst / 1e9,
                "busbw_GBps": 2 * (n - 1) / n * nbytes / worst / 1e9,
            },
            args.json,
        )


def _model(name):
    if name == "digits":
        return models.DigitsCNN(num_classes=10, attention="cbam"), (1, 8, 8)
    build = getattr(models, name)
    return build(num_classes=10, attention="cbam", stem="cifar"), (3, 32, 32)


def bench_step(args):
    mc.manual_seed(0)
    model, shape = _model(args.model)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the processes ({world})")
    local = args.batch // world
    rng = np.random.default_rng(dist.get_rank() if dist.is_initialized() else 0)
    x = mc.tensor(rng.standard_normal((local,) + shape).astype(np.float32))
    y = mc.tensor(rng.integers(0, 10, local))
    ddp = None
    if dist.is_initialized() and not args.no_ddp:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model)
    net = ddp or model
    opt = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times, waits = [], []
    for step in range(args.steps + 1):
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if step:  # step 0 is the warm-up (JIT compilation)
            times.append(time.perf_counter() - t0)
            waits.append(ddp.last_wait_seconds if ddp is not None else 0.0)
    alone = None
    if dist.is_initialized():  # the slowest rank sets the pace
        times = list(np.max(dist.default_group().comm.allgather(times), axis=0))
        alone = _allreduce_alone(model)
    params = sum(p.numel() for p in model.parameters())
    _emit(
        {
            "bench": "step",
            "model": args.model,
            "ddp": ddp is not None,
            "global_batch": args.batch,
            "steps": args.steps,
            "min_s": min(times),
            "median_s": statistics.median(times),
            "samples_per_s": args.batch / min(times),
            "median_wait_s": statistics.median(waits),
            "allreduce_alone_s": alone,
            "hidden_fraction": None if not alone else 1 - statistics.median(waits) / alone,
            "parameters": params,
            "gradient_bytes": params * 4,
            "buckets": len(ddp._buckets) if ddp is not None else 0,
        },
        args.json,
    )


def _allreduce_alone(model):
    """Seconds of one blocking allreduce of all the gradients (float32), nothing else
    running: the communication the overlap tries to hide (min of 3, slowest rank)."""
    from mpi4py import MPI

    comm = dist.default_group().comm
    buf = np.ones(sum(p.numel() for p in model.parameters()), np.float32)
    times = []
    for _ in range(3):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf)
        times.append(time.perf_counter() - t0)
    return max(comm.allgather(min(times)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("allreduce", "step"))
    p.add_argument("--model", default="digits", choices=("digits", "resnet18", "resnet50"))
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-ddp", action="store_true")
    p.add_argument("--threads", type=int, help="threads per process")
    p.add_argument("--json", help="append the JSON lines to this file")
    args = p.parse_args()
    if RANKS > 1:
        dist.init_process_group(backend="mpi")
    guard = dist.abort_on_error("bench_distributed") if RANKS > 1 else contextlib.nullcontext()
    with guard:
        (bench_allreduce if args.what == "allreduce" else bench_step)(args)


if __name__ == "__main__":
    main()
