"""The CPU task pool: results in order, and BLAS single-threaded while tasks run, also when
they run inline (one task, or one numba thread)."""

import numba
import numpy as np
import pytest

from minicbam.kernels import task_pool


@pytest.fixture
def blas_two_threads():
    """NumPy's BLAS at two threads for the test (restored after)."""
    blas = task_pool._blas_controller()
    if blas is False:
        pytest.fail("threadpoolctl finds no NumPy BLAS: the pool cannot run its tasks")
    previous = blas.num_threads
    blas.set_num_threads(2)
    try:
        yield blas
    finally:
        blas.set_num_threads(previous)


def _blas_threads_and_product(a, b):
    return task_pool._blas_controller().num_threads, a @ b


@pytest.mark.parametrize("tasks", [1, 2, 5])
@pytest.mark.parametrize("numba_threads", [1, 2])
def test_tasks_run_with_single_threaded_blas(blas_two_threads, tasks, numba_threads):
    if blas_two_threads.num_threads != 2:
        pytest.fail("NumPy's BLAS cannot run two threads here; the check needs two")
    rng = np.random.default_rng(tasks)
    args = [(rng.standard_normal((3, 4)), rng.standard_normal((4, 2))) for _ in range(tasks)]
    previous = numba.get_num_threads()
    numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        results = task_pool.run_tasks(_blas_threads_and_product, args)
    finally:
        numba.set_num_threads(previous)
    assert [threads for threads, _ in results] == [1] * tasks
    for (_, got), (a, b) in zip(results, args):
        np.testing.assert_allclose(got, a @ b, rtol=1e-12)
    assert blas_two_threads.num_threads == 2  # restored once the tasks are done


def _kernels_run_in_pool_tasks():
    """The njit kernels that conv2d's and the Winograd path's pool tasks call."""
    from minicbam.kernels import im2col, strided, winograd

    return {
        "winograd._input_transform": winograd._input_transform,
        "winograd._output_transform": winograd._output_transform,
        "winograd._grad_tile_transform": winograd._grad_tile_transform,
        "im2col._im2col_cpu": im2col._im2col_cpu,
        "im2col._col2im_cpu": im2col._col2im_cpu,
        "strided._gather_cpu": strided._gather_cpu,
        "strided._scatter_cpu": strided._scatter_cpu,
    }


@pytest.mark.parametrize("name", sorted(_kernels_run_in_pool_tasks()))
def test_kernels_called_from_pool_tasks_release_the_gil(name):
    # the pool's workers are Python threads: a kernel that holds the GIL runs them one at a
    # time (the Winograd transforms did: a 64 -> 64 conv at 32x32, batch 64, took 26-29 ms
    # per pass on 2 cores, 15-19 ms with the GIL released)
    kernel = _kernels_run_in_pool_tasks()[name]
    assert kernel.targetoptions.get("nogil") is True, f"{name} holds the GIL while it runs"
