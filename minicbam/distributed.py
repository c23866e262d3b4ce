"""``minicbam.distributed``: collectives between processes over MPI, shaped like
``torch.distributed`` with its MPI backend.

    mpiexec -n 4 python train.py          # every process runs the same script

    import minicbam.distributed as dist
    dist.init_process_group(backend="mpi")
    t = mc.tensor([float(dist.get_rank())])
    dist.all_reduce(t)                     # in place: t = 0 + 1 + 2 + 3 on every rank

MPI comes from ``mpi4py`` (``pip install 'minicbam[mpi]'`` brings it with the ``mpich``
runtime, whose ``mpiexec`` lands in the environment's ``bin/``; a system MPI works too).
The group is ``MPI.COMM_WORLD``, duplicated so that minicbam's messages never mix with the
caller's own use of MPI. Collectives work on the tensor's host memory: a CUDA tensor is
copied to the host, reduced and copied back (minicbam does not use a CUDA-aware MPI).

``abort(message)`` ends every process of the job (``MPI_Abort``): a rank that fails must not
leave the others waiting forever inside a collective.
"""

import contextlib
import os
import sys
import time
import traceback

import numpy as np

from minicbam import device

__all__ = [
    "ReduceOp",
    "abort",
    "abort_on_error",
    "all_gather",
    "all_reduce",
    "barrier",
    "broadcast",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_available",
    "is_initialized",
    "launched_world_size",
]

_group = None  # the default process group (a _Group) once init_process_group has run


class ReduceOp:
    SUM = "sum"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    AVG = "avg"  # SUM, then divided by the world size


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "minicbam.distributed needs mpi4py and an MPI runtime: "
            "pip install 'minicbam[mpi]' (mpi4py and the mpich wheel)"
        ) from exc
    return MPI


def is_available():
    """Whether mpi4py can be imported."""
    try:
        _mpi()
    except ImportError:
        return False
    return True


def launched_world_size(environ=None):
    """The number of processes an MPI launcher started, read from the environment (1 if
    none): ``PMI_SIZE`` (MPICH's Hydra, Intel MPI) or ``OMPI_COMM_WORLD_SIZE`` (Open MPI).
    Reading it needs no MPI import, so a plain run never loads MPI."""
    environ = os.environ if environ is None else environ
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


class _Group:
    """A communicator and the operations minicbam runs on it."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_array(self, array):
        """Sum of a host array over the ranks (a new float64 array for statistics)."""
        out = np.empty_like(array)
        self.comm.Allreduce(np.ascontiguousarray(array), out, op=_mpi().SUM)
        return out

    def allgather_array(self, array):
        """(size, *array.shape): every rank's array, in rank order."""
        array = np.ascontiguousarray(array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        self.comm.Allgather(array, out)
        return out


def init_process_group(backend="mpi", init_method=None, world_size=-1, rank=-1):
    """Join the processes started by ``mpiexec`` into the default group.

    Only ``backend="mpi"``: MPI decides the world size and the ranks, so ``world_size`` and
    ``rank`` must be left at -1 or agree with it.
    """
    global _group
    if backend != "mpi":
        raise ValueError(f"init_process_group: only backend='mpi' is supported, got {backend!r}")
    if _group is not None:
        raise RuntimeError("init_process_group: the default process group is already initialised")
    MPI = _mpi()
    group = _Group(MPI.COMM_WORLD.Dup())
    for name, given, actual in (("world_size", world_size, group.size), ("rank", rank, group.rank)):
        if given not in (-1, actual):
            group.comm.Free()
            raise ValueError(f"init_process_group: {name}={given}, but MPI says {actual}")
    _group = group


def is_initialized():
    return _group is not None


def default_group():
    """The default group; a clear error if ``init_process_group`` has not run."""
    if _group is None:
        raise RuntimeError(
            "minicbam.distributed: the default process group is not initialised; call "
            "minicbam.distributed.init_process_group(backend='mpi') first"
        )
    return _group


def get_rank(group=None):
    return (group or default_group()).rank


def get_world_size(group=None):
    return (group or default_group()).size


def destroy_process_group(group=None):
    global _group
    target = group or default_group()
    target.comm.Free()
    if target is _group:
        _group = None


# ----------------------------------------------------------------------------- collectives
def _check_tensor(op, tensor):
    from minicbam.tensor import Tensor

    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: expected a minicbam Tensor, got {type(tensor).__name__}")


def _host(tensor):
    """The tensor's host buffer: the array itself on the CPU, a copy for CUDA."""
    data = tensor.data
    return data if isinstance(data, np.ndarray) else device.to_host(data)


def _write_back(tensor, host):
    if not isinstance(tensor.data, np.ndarray):
        tensor.data.copy_to_device(host)  # CUDA: through host memory (see the module docstring)


def _mpi_op(op):
    MPI = _mpi()
    table = {
        ReduceOp.SUM: MPI.SUM,
        ReduceOp.AVG: MPI.SUM,
        ReduceOp.PRODUCT: MPI.PROD,
        ReduceOp.MIN: MPI.MIN,
        ReduceOp.MAX: MPI.MAX,
    }
    if op not in table:
        raise ValueError(f"all_reduce: unknown op {op!r}; use a minicbam.distributed.ReduceOp")
    return table[op]


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduce ``tensor`` over the ranks, in place (every rank gets the result)."""
    _check_tensor("all_reduce", tensor)
    group = group or default_group()
    host = _host(tensor)
    group.comm.Allreduce(_mpi().IN_PLACE, host, op=_mpi_op(op))
    if op == ReduceOp.AVG:
        np.divide(host, group.size, out=host, casting="unsafe")
    _write_back(tensor, host)


def broadcast(tensor, src, group=None, async_op=False):
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every rank, in place."""
    _check_tensor("broadcast", tensor)
    group = group or default_group()
    if not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be in [0, {group.size}), got {src}")
    host = _host(tensor)
    group.comm.Bcast(host, root=src)
    _write_back(tensor, host)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """``tensor_list[r]`` <- rank r's ``tensor``, in place, for every rank r."""
    _check_tensor("all_gather", tensor)
    group = group or default_group()
    if len(tensor_list) != group.size:
        raise ValueError(
            f"all_gather: tensor_list must hold one tensor per rank ({group.size}), "
            f"got {len(tensor_list)}"
        )
    for t in tensor_list:
        _check_tensor("all_gather", t)
        if t.shape != tensor.shape or t.dtype != tensor.dtype:
            raise ValueError(
                f"all_gather: every output must be {tensor.shape} {tensor.dtype} like the "
                f"input, got {t.shape} {t.dtype}"
            )
    gathered = group.allgather_array(_host(tensor))
    for t, part in zip(tensor_list, gathered):
        if isinstance(t.data, np.ndarray):
            t.data[...] = part
        else:
            t.data.copy_to_device(np.ascontiguousarray(part))


def barrier(group=None):
    (group or default_group()).comm.Barrier()


# ----------------------------------------------------------------------------- failures
def abort(message, code=1):
    """Print ``message`` to stderr and end every process of the MPI job."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    # Give the launcher a moment to forward the message: once MPI_Abort reaches it, it
    # kills every process and may drop output still in the pipes.
    time.sleep(0.5)
    _mpi().COMM_WORLD.Abort(code)
    os._exit(code)  # MPICH's MPI_Abort can return before the launcher kills this process


@contextlib.contextmanager
def abort_on_error(what="minicbam", plain=()):
    """Turn an exception in this rank into an ``MPI_Abort`` of the whole job, with a message
    naming the rank, instead of leaving the other ranks blocked in their next collective.
    Exceptions of the types in ``plain`` (the user's mistakes) get a one-line message and
    exit status 2; others their traceback and status 1."""
    try:
        yield
    except BaseException as exc:  # KeyboardInterrupt and SystemExit must stop the job too
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        rank = _mpi().COMM_WORLD.Get_rank()
        sys.stderr = sys.__stderr__  # a silenced rank still reports its failure
        if isinstance(exc, plain):
            abort(f"{what}: error: {exc} (rank {rank}); stopping every rank of the job", 2)
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        abort(
            f"{detail}{what}: rank {rank} failed ({type(exc).__name__}: {exc}); "
            "stopping every rank of the job",
        )
