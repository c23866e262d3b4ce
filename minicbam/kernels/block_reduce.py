"""Block-level tree reductions for CUDA kernels, deterministic by construction.

A block of ``T`` threads (``T`` a power of two, the length of a shared array the calling
kernel declares) reduces one value per thread. Thread ``t`` first writes its value to
``buf[t]``; then, for ``s = T/2, T/4, ..., 1``, thread ``t < s`` sets

    buf[t] = buf[t] + buf[t + s]                    (sum)
    (val[t], idx[t]) = better of (t, t + s)         (max with its index)

with a barrier between rounds, so ``buf[0]`` holds the result. The pairing never depends
on timing, so a launch with the same grid gives the same bits every run (no atomics on
floating-point values). For max with indices a tie keeps the smaller index, the rule of
the CPU kernels and of PyTorch (the first maximum). NaN wins over any number, as in
``torch.max``.

Every thread of the block must call these functions (they contain barriers): call them
outside any branch that depends on the thread index. The functions return the result to
every thread and leave the shared arrays free for the next use.

``block_threads()`` is the block size reducing kernels launch with: 256 on a GPU, 32 on
the simulator, which runs one Python thread per CUDA thread.
"""

import functools
import math

from minicbam import device

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)

GPU_BLOCK = 256
SIM_BLOCK = 32


def block_threads():
    """Threads per block of a reducing kernel (a power of two; the shared arrays' length)."""
    return SIM_BLOCK if device.cuda_backend() == "sim" else GPU_BLOCK


@functools.cache
@device.cuda_factory
def block_sum_device():
    """``block_sum(buf, value)``: the sum of ``value`` over the block's threads."""

    @cuda.jit(device=True)
    def block_sum(buf, value):
        t = cuda.threadIdx.x
        buf[t] = value
        cuda.syncthreads()
        s = buf.size // 2
        while s > 0:
            if t < s:
                buf[t] += buf[t + s]
            cuda.syncthreads()
            s //= 2
        total = buf[0]
        cuda.syncthreads()  # every thread has read buf[0] before anyone writes buf again
        return total

    return block_sum


@functools.cache
@device.cuda_factory
def block_argmax_device():
    """``block_argmax(vals, idxs, value, index)``: the block's ``(max, its index)``; a tie
    keeps the smaller index, and NaN beats every number. Threads with nothing to offer
    pass ``index = -1``, which loses to any real candidate."""

    @cuda.jit(device=True)
    def better(v, i, w, j):
        # is (w, j) better than (v, i)?
        if j < 0:
            return False
        if i < 0:
            return True
        if math.isnan(w):
            return not math.isnan(v) or j < i
        if math.isnan(v):
            return False
        return w > v or (w == v and j < i)

    @cuda.jit(device=True)
    def block_argmax(vals, idxs, value, index):
        t = cuda.threadIdx.x
        vals[t] = value
        idxs[t] = index
        cuda.syncthreads()
        s = vals.size // 2
        while s > 0:
            if t < s and better(vals[t], idxs[t], vals[t + s], idxs[t + s]):
                vals[t] = vals[t + s]
                idxs[t] = idxs[t + s]
            cuda.syncthreads()
            s //= 2
        best, where = vals[0], idxs[0]
        cuda.syncthreads()
        return best, where

    return block_argmax


# Blocks of a block-per-plane kernel on the simulator: more than one, so that the block
# stride of the plane loop is exercised, and few, since every simulated thread is a Python
# thread.
SIM_PLANE_BLOCKS = 2


def plane_blocks(planes):
    """Blocks a GPU launches for ``planes`` planes: one each, at most device.MAX_BLOCKS (the
    kernel's plane loop strides by the grid's block count)."""
    return max(1, min(planes, device.MAX_BLOCKS))


def plane_launcher(kernel, planes, items):
    """``launch(out, *args)`` running ``kernel`` with one block of ``block_threads()`` threads
    per plane (``planes(out, *args)`` of them). The kernel loops over planes with
    ``range(cuda.blockIdx.x, P, cuda.gridDim.x)`` and over a plane's elements with
    ``range(cuda.threadIdx.x, M, cuda.blockDim.x)``: neighbouring threads read neighbouring
    addresses. ``launch.gpu_shape`` gives what a GPU would launch, with ``items(out, *args)``
    (the elements reduced) as its work items."""

    def config(*args):
        if device.cuda_backend() == "sim":
            return min(plane_blocks(planes(*args)), SIM_PLANE_BLOCKS), SIM_BLOCK
        return plane_blocks(planes(*args)), GPU_BLOCK

    launch = device.launcher(kernel, config=config)
    launch.gpu_shape = lambda *args: (plane_blocks(planes(*args)), GPU_BLOCK, items(*args))
    return launch
