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
