"""The CUDA GEMM (kernels/gemm.py, make_gemm_cuda) on the simulator, for several tile
shapes: against np.matmul and the CPU kernel, with sizes drawn across the tile, register
block and k-step remainders, transposed operands, broadcast batch maps, and two launches
giving the same bits.

Operands are multiples of 1/4 in a small range: every product and partial sum is exact in
float32 and float64, so the comparisons are equalities whatever the summation order.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicbam import device
from minicbam.kernels import gemm

pytestmark = pytest.mark.cuda

# (tile, outputs per thread, k step, blocks): (tile / per_thread)^2 threads, a grid smaller
# than the number of tiles (a block-stride loop), k steps that do not divide the tile
TILINGS = [(8, 2, 4, 2), (8, 4, 3, 3), (4, 1, 2, 2), (6, 3, 5, 1)]
_launchers = {}


def launcher(tiling):
    if tiling not in _launchers:
        _launchers[tiling] = gemm.make_gemm_cuda(*tiling)
    return _launchers[tiling]


def quarters(rng, shape, dtype):
    return (rng.integers(-6, 7, size=shape) / 4).astype(dtype)


@st.composite
def problems(draw):
    """(a, b, ta, tb, out batch) with op(a) (..., M, K), op(b) (..., K, N); each operand's
    batch dims are the output's or 1 (broadcast), or absent."""
    M, N = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    K = draw(st.one_of(st.integers(1, 4), st.integers(5, 13)))
    batch = tuple(draw(st.lists(st.integers(2, 3), max_size=2)))

    def lead():
        dims = tuple(1 if draw(st.booleans()) else s for s in batch)
        return dims[draw(st.integers(0, len(dims))) :]

    ta, tb = draw(st.booleans()), draw(st.booleans())
    a_shape = lead() + ((K, M) if ta else (M, K))
    b_shape = lead() + ((N, K) if tb else (K, N))
    return a_shape, b_shape, ta, tb, batch


def run_gemm(launch_or_kernel, a, b, ta, tb, batch, dtype):
    M = a.shape[-1] if ta else a.shape[-2]
    N = b.shape[-2] if tb else b.shape[-1]
    B = int(np.prod(batch, dtype=np.int64))
    a3, (a_div, a_mod) = gemm._as_batched(a, batch)
    b3, (b_div, b_mod) = gemm._as_batched(b, batch)
    args = (a_div, a_mod, b_div, b_mod, dtype(0))
    if launch_or_kernel is gemm.gemm_kernel:  # the CPU kernel on NumPy arrays
        out = np.empty((B, M, N), dtype)
        gemm.gemm_kernel(out, np.ascontiguousarray(a3), np.ascontiguousarray(b3), ta, tb, *args)
        return out.reshape(batch + (M, N))
    out = device.empty((B, M, N), dtype, device.CUDA)
    a_dev = device.to_device(np.ascontiguousarray(a3), device.CUDA)
    b_dev = device.to_device(np.ascontiguousarray(b3), device.CUDA)
    launch_or_kernel(out, a_dev, b_dev, ta, tb, *args)
    return device.to_host(out).reshape(batch + (M, N))


@given(
    problem=problems(),
    tiling=st.sampled_from(TILINGS),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 99),
)
def test_tiled_gemm_matches_numpy_and_cpu(problem, tiling, dtype, seed):
    a_shape, b_shape, ta, tb, batch = problem
    rng = np.random.default_rng(seed)
    a, b = quarters(rng, a_shape, dtype), quarters(rng, b_shape, dtype)
    want = np.matmul(a.swapaxes(-1, -2) if ta else a, b.swapaxes(-1, -2) if tb else b)
    want = np.broadcast_to(want, batch + want.shape[-2:])
    got = run_gemm(launcher(tiling), a, b, ta, tb, batch, dtype)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, run_gemm(gemm.gemm_kernel, a, b, ta, tb, batch, dtype))
    again = run_gemm(launcher(tiling), a, b, ta, tb, batch, dtype)
    assert got.tobytes() == again.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_tiling_of_random_values_is_close(dtype):
    # the Kernel's own launcher (the simulator's tiling), ragged on every edge, transposed a
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 13, 17)).astype(dtype), rng.standard_normal((13, 11))
    b = b.astype(dtype)
    got = run_gemm(gemm.make_gemm_cuda(*_sim_tiling()), a, b, True, False, (2,), dtype)
    want = a.swapaxes(-1, -2).astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _sim_tiling():
    return gemm.SIM_TILE, gemm.SIM_PER_THREAD, gemm.SIM_DEPTH, gemm.SIM_MAX_TILE_BLOCKS


def test_gpu_tiling_has_many_outputs_per_thread():
    # what the Kernel's launcher reports for a GPU, built here on the simulator
    launch = gemm._gemm_cuda()
    out = np.empty((1, 256, 256))
    blocks, threads, _ = launch.gpu_shape(out, None, None, False, False, 1, 1, 1, 1, 0.0)
    assert threads == (16, 16) and blocks == 16  # 64 x 64 tiles, 16 outputs per thread
