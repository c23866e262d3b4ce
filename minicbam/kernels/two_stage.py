"""Launch plans of the two-stage CUDA reductions (row sums and maxima, column sums, bias
gradients), deterministic by construction.

A reduction of R rows of K elements gives each row S blocks (S >= 1):

    stage 1: block (r, s) reduces segment s of row r, elements [s L, min(K, (s + 1) L))
             with L = ceil(K / S): thread t reads t, t + T, t + 2T, ... of the segment
             (neighbouring threads, neighbouring addresses), then the block's threads
             combine their values with the fixed tree of kernels/block_reduce.py; one
             partial per (r, s) goes to a scratch buffer of R * S values;
    stage 2: one block per row reduces its S partials the same way (only when S > 1).

S is large when rows are few and long (a sum to one value reads with the whole device)
and 1 when there are enough rows to fill it. S and the block size T depend only on
(R, K) and the backend, never on timing or on the number of blocks a grid-stride loop
spreads the pairs over, so a result has the same bits on every run (no floating-point
atomics). Column sums (out[j] = sum_r x[r, j]) split the rows into chunks instead: one
thread per (chunk, column), neighbouring threads on neighbouring columns.
"""

from minicbam import device
from minicbam.kernels.block_reduce import GPU_BLOCK, SIM_BLOCK

GPU_TARGET_BLOCKS = 1024  # ~ an H200 full: 132 SMs x 8 resident blocks of 256 threads
# The simulator runs blocks one after another, each with a Python thread per CUDA thread:
# up to 6 segments per row (3 each for 2 rows: not a power of two) over a grid of 2 blocks
# (a block visits several pairs) keep test launches short.
SIM_TARGET_BLOCKS = 6
SIM_GRID = 2
GPU_MIN_PER_THREAD = 8  # elements each thread reads at least before a row is split
SIM_MIN_PER_THREAD = 2  # tiny test rows split, and a thread reads several of a segment
GPU_MAX_GRID = 65535
GPU_SMALL_ROW = 32  # rows up to this long are summed by one thread each (no tree)
SIM_SMALL_ROW = 4
GPU_MIN_ROWS_PER_THREAD = 16  # column sums: rows each thread adds at least
SIM_MIN_ROWS_PER_THREAD = 2


def threads(gpu):
    """Threads per block of a reducing kernel, for a GPU or for the simulator."""
    return GPU_BLOCK if gpu else SIM_BLOCK


def small_row(K, gpu):
    """Whether rows of K elements are short enough for one thread per row."""
    return K <= (GPU_SMALL_ROW if gpu else SIM_SMALL_ROW)


def segments(rows, length, gpu):
    """S, the blocks sharing each of ``rows`` rows of ``length`` elements."""
    target = GPU_TARGET_BLOCKS if gpu else SIM_TARGET_BLOCKS
    per_block = threads(gpu) * (GPU_MIN_PER_THREAD if gpu else SIM_MIN_PER_THREAD)
    if rows >= target:
        return 1
    return max(1, min(-(-length // per_block), target // rows))


def blocks(pairs, gpu):
    """Blocks of a grid whose block-stride loop visits ``pairs`` (row, segment) pairs."""
    return max(1, min(pairs, GPU_MAX_GRID if gpu else SIM_GRID))


def column_chunks(rows, columns, gpu):
    """S, the chunks of rows a column sum over ``rows`` rows of ``columns`` is split into."""
    target = GPU_TARGET_BLOCKS * GPU_BLOCK if gpu else SIM_BLOCK  # threads to fill
    per_thread = GPU_MIN_ROWS_PER_THREAD if gpu else SIM_MIN_ROWS_PER_THREAD
    if columns >= target:
        return 1
    return max(1, min(-(-rows // per_thread), target // columns))


def thread_grid(items, gpu):
    """(blocks, threads) for a grid-stride loop over ``items`` (one block on the simulator)."""
    if gpu:
        return device.gpu_launch_config(items)
    return device.SIM_MAX_BLOCKS, device.SIM_THREADS_PER_BLOCK
