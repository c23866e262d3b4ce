"""The CPU task pool: independent pieces of work on a few Python threads.

OpenBLAS's own threads synchronise in lock-step and spin; on a shared 2-core machine that
made a conv-shaped sgemm 20x slower under load (72 ms against 3 ms single-threaded). So
while a batch of tasks runs, NumPy's BLAS is set to one thread (threadpoolctl) and the
pieces run on a small pool of Python threads (np.matmul and numba's kernels release the
GIL). Each worker also runs numba's parallel loops on its own thread only (numba's thread
count is per thread), so a task may call Kernels and gemm freely.
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_pool = None
_blas = None  # threadpoolctl's controller of NumPy's OpenBLAS; False when unavailable
_in_worker = threading.local()


def _blas_controller():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # leave BLAS's own threads alone
            _blas = False
            return _blas
        # NumPy's BLAS: the one bundled in numpy.libs (SciPy brings its own pool)
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
        own = [
            lib
            for lib in libs
            if os.path.dirname(lib.filepath) == os.path.join(numpy_dir, "numpy.libs")
        ]
        _blas = own[0] if len(own) == 1 else libs[0] if len(libs) == 1 else False
        if _blas is not False and WARM_UP_PRODUCT is not None:
            _warm_up_blas(_blas)
    return _blas


# NumPy's OpenBLAS, single-threaded, ran 256 x 256 x 256 sgemm at ~10 GFLOP/s instead of ~37
# (AMD EPYC Zen 1 host, OpenBLAS 0.3.31) until some product in the process had used more of
# its work buffer: one (64, 256) @ (256, 1024) product (~2 ms) made every later one full
# speed, on every thread. A 256-channel Winograd conv (its 36 GEMMs are 256 x 256 x 256)
# took 215 ms forward + backward instead of ~120 in a process that ran nothing bigger first.
# docs/performance.md ("OpenBLAS's cold buffer") has the measurements; None skips it
# (benchmarks/blas_warm_up.py compares).
WARM_UP_PRODUCT = ((64, 256), (256, 1024))


def _warm_up_blas(blas):
    """One single-threaded float32 product of WARM_UP_PRODUCT's shapes (see above)."""
    a, b = (np.ones(shape, np.float32) for shape in WARM_UP_PRODUCT)
    previous = blas.num_threads
    blas.set_num_threads(1)
    try:
        np.matmul(a, b)
    finally:
        blas.set_num_threads(previous)


def pool_usable():
    """False when NumPy's BLAS cannot be found (its threads are then left alone)."""
    return _blas_controller() is not False


def cpu_workers():
    """How many CPU tasks run at once (numba's thread count: benchmarks set it)."""
    return 1 if getattr(_in_worker, "active", False) else numba.get_num_threads()


def run_tasks(fn, arg_lists, pooled=True):
    """fn(*args) for every args in arg_lists, on the CPU pool (results in order).

    While they run, BLAS is single-threaded and each worker runs numba's parallel loops on
    its own thread (numba's thread count is per thread), so tasks may call Kernels and
    gemm freely; a task calling run_tasks runs its tasks inline. ``pooled=False`` runs
    them inline too, the same way (for work smaller than a hand-off to the pool costs)."""
    global _pool
    blas = _blas_controller()
    if not pooled or len(arg_lists) <= 1 or cpu_workers() <= 1 or blas is False:
        # inline, BLAS single-threaded as in the pool: a lone task (a small Winograd conv) or
        # a process limited to one numba thread otherwise woke OpenBLAS's spinning threads
        # (a digits CNN step at one numba thread: ~117 ms against ~23 ms, loaded machine)
        with single_threaded_blas():
            return [fn(*args) for args in arg_lists]
    if _pool is None:
        _pool = ThreadPoolExecutor(
            numba.config.NUMBA_NUM_THREADS, "minicbam-cpu", initializer=_mark_worker
        )
    previous = blas.num_threads
    blas.set_num_threads(1)
    try:
        jobs = [_pool.submit(fn, *args) for args in arg_lists]
        return [job.result() for job in jobs]
    finally:
        blas.set_num_threads(previous)


def _mark_worker():
    _in_worker.active = True
    numba.set_num_threads(1)


@contextlib.contextmanager
def single_threaded_blas():
    """NumPy's BLAS on one thread inside the block (workers already run it so).

    A product too small for the pool still woke OpenBLAS's second thread, which spins in
    lock-step with the first: on the loaded 2-core machine a digits CNN step went from
    ~35 ms to ~280 ms (median of 5 alternating rounds) with BLAS left at two threads."""
    blas = _blas_controller()
    if blas is False or getattr(_in_worker, "active", False):
        yield
        return
    previous = blas.num_threads
    if previous == 1:
        yield
        return
    blas.set_num_threads(1)
    try:
        yield
    finally:
        blas.set_num_threads(previous)
