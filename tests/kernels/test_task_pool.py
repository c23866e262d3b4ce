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


class _RecordingBlas:
    """A stand-in for threadpoolctl's controller: records the thread counts it is set to."""

    def __init__(self, threads):
        self.num_threads, self.settings = threads, []

    def set_num_threads(self, n):
        self.settings.append(n)
        self.num_threads = n


def test_blas_warm_up_runs_one_single_threaded_product(monkeypatch):
    # _warm_up_blas multiplies WARM_UP_PRODUCT's shapes once, with BLAS at one thread, and
    # puts the thread count back; the controller runs it once, when it first finds the BLAS
    products, blas = [], _RecordingBlas(2)

    def recording_matmul(a, b, *args, **kwargs):
        products.append((a.shape, b.shape, a.dtype, blas.num_threads))
        return np.dot(a, b)

    monkeypatch.setattr(task_pool.np, "matmul", recording_matmul)
    task_pool._warm_up_blas(blas)
    a_shape, b_shape = task_pool.WARM_UP_PRODUCT
    assert products == [(a_shape, b_shape, np.float32, 1)]
    assert blas.settings == [1, 2] and blas.num_threads == 2

    calls = []
    monkeypatch.setattr(task_pool, "_warm_up_blas", calls.append)
    monkeypatch.setattr(task_pool, "_blas", None)
    found = task_pool._blas_controller()
    task_pool._blas_controller()
    assert calls == ([found] if found is not False else [])
    monkeypatch.setattr(task_pool, "_blas", None)
    monkeypatch.setattr(task_pool, "WARM_UP_PRODUCT", None)  # switched off: not run
    task_pool._blas_controller()
    assert len(calls) == (1 if found is not False else 0)
