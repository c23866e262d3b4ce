"""The two-stage CUDA reductions (kernels/two_stage.py) on the simulator: row sums, column
sums, row maxima and the conv bias gradient against NumPy AND the CPU kernel, and the ops
that reduce to one value (mean losses, var, amax, clip_grad_norm_) on long inputs, on sizes
drawn across the block (32 threads), the short-row threshold and the split into several
blocks per row (2 to 4 here, segments of up to 64 elements: 2 per thread), and two launches giving the same bits.

Sums use values that are multiples of 1/4 (exact in float32 and float64), so every order of
addition gives the same number and a dropped or doubled element shows as an inequality.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicbam as mc
from minicbam import device, optim
from minicbam.device_events import count_device_events
from minicbam.kernels import two_stage
from minicbam.kernels.gemm import bias_grad_kernel
from minicbam.ops.max import max_rows_kernel
from minicbam.ops.reduce import sum_columns_kernel, sum_rows_kernel

pytestmark = pytest.mark.cuda

FLOATS = [np.float32, np.float64]


def quarters(rng, shape, dtype, levels=9):
    return ((rng.integers(0, levels, size=shape) - levels // 2) / 4).astype(dtype)


def on_cuda(x):
    return device.to_device(np.ascontiguousarray(x), device.CUDA)


def run_twice(kernel, shapes_dtypes, *args):
    """Run ``kernel`` on CUDA twice with fresh outputs; return the host copies of both."""
    results = []
    for _ in range(2):
        outs = [device.empty(s, d, device.CUDA) for s, d in shapes_dtypes]
        kernel(*outs, *args)
        results.append([device.to_host(o) for o in outs])
    return results


def assert_same_bits(first, second):
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


# rows: 1 (a sum to one value: up to 6 blocks), 2 or 3 (several blocks each); lengths
# around 4 (one thread per row below), 32 (a block) and across several blocks
ROWS = st.integers(1, 3)
LENGTHS = st.one_of(st.integers(0, 6), st.integers(30, 70), st.integers(100, 200))


@given(
    R=ROWS, K=LENGTHS, dtype=st.sampled_from(FLOATS + [np.int64, np.bool_]), seed=st.integers(0, 99)
)
def test_row_sums_match_numpy_and_cpu(R, K, dtype, seed):
    rng = np.random.default_rng(seed)
    x = quarters(rng, (R, K), np.float64) if dtype != np.bool_ else rng.integers(0, 2, (R, K))
    x = x.astype(dtype)
    kind_float = np.issubdtype(dtype, np.floating)
    out_dtype, zero = (dtype, np.float64(0)) if kind_float else (np.int64, np.int64(0))
    first, second = run_twice(sum_rows_kernel, [((R,), out_dtype)], on_cuda(x.ravel()), K, zero)
    cpu = np.empty(R, out_dtype)
    sum_rows_kernel(cpu, x.ravel(), K, zero)
    np.testing.assert_array_equal(first[0], x.astype(np.float64).sum(1).astype(out_dtype))
    np.testing.assert_array_equal(first[0], cpu)
    assert_same_bits(first, second)


@given(R=ROWS, K=LENGTHS, dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_row_sums_of_random_values_are_deterministic_and_close(R, K, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((R, K)).astype(dtype)
    first, second = run_twice(
        sum_rows_kernel, [((R,), dtype)], on_cuda(x.ravel()), K, np.float64(0)
    )
    cpu = np.empty(R, dtype)
    sum_rows_kernel(cpu, x.ravel(), K, np.float64(0))
    # float64 accumulation on both devices: only the last float64 bits differ
    np.testing.assert_allclose(
        first[0],
        x.astype(np.float64).sum(1),
        rtol=1e-6 if dtype == np.float32 else 1e-13,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        first[0], cpu, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-12
    )
    assert_same_bits(first, second)


@given(
    R=st.one_of(st.integers(0, 3), st.integers(10, 45)),
    J=st.one_of(st.integers(1, 4), st.integers(30, 40)),
    dtype=st.sampled_from(FLOATS + [np.int64]),
    seed=st.integers(0, 99),
)
def test_column_sums_match_numpy_and_cpu(R, J, dtype, seed):
    x = quarters(np.random.default_rng(seed), (R, J), dtype)
    zero = np.int64(0) if dtype == np.int64 else np.float64(0)
    first, second = run_twice(sum_columns_kernel, [((J,), dtype)], on_cuda(x.ravel()), R, zero)
    cpu = np.empty(J, dtype)
    sum_columns_kernel(cpu, x.ravel(), R, zero)
    np.testing.assert_array_equal(first[0], x.astype(np.float64).sum(0).astype(dtype))
    np.testing.assert_array_equal(first[0], cpu)
    assert_same_bits(first, second)


@given(
    R=ROWS,
    K=st.one_of(st.integers(1, 6), st.integers(30, 70), st.integers(100, 200)),
    dtype=st.sampled_from(FLOATS),
    levels=st.sampled_from([2, 3, 1000]),  # 2, 3: ties everywhere
    nans=st.integers(0, 3),
    seed=st.integers(0, 99),
)
def test_row_maxima_first_index_match_numpy_and_cpu(R, K, dtype, levels, nans, seed):
    rng = np.random.default_rng(seed)
    x = quarters(rng, (R, K), dtype, levels)
    for _ in range(nans):  # NaN wins, the first NaN's index
        x[rng.integers(R), rng.integers(K)] = np.nan
    shapes = [((R,), dtype), ((R,), np.int64)]
    first, second = run_twice(max_rows_kernel, shapes, on_cuda(x.ravel()), K)
    values, indices = np.empty(R, dtype), np.empty(R, np.int64)
    max_rows_kernel(values, indices, x.ravel(), K)
    want = np.argmax(x, axis=1)  # NumPy: the first maximum, NaN counting as the largest
    np.testing.assert_array_equal(first[1], want)
    np.testing.assert_array_equal(first[1], indices)
    np.testing.assert_array_equal(first[0], x[np.arange(R), want])
    np.testing.assert_array_equal(first[0], values)
    assert_same_bits(first, second)


@pytest.mark.parametrize("R, K", [(1, 200), (2, 150), (3, 70), (2, 40)])
def test_row_maxima_of_equal_values_are_the_first(R, K):
    # every thread of every segment sees several ties: each must keep its first one
    x = np.ones((R, K))
    first, _ = run_twice(
        max_rows_kernel, [((R,), np.float64), ((R,), np.int64)], on_cuda(x.ravel()), K
    )
    np.testing.assert_array_equal(first[1], np.zeros(R, np.int64))


@given(
    N=st.integers(1, 5),
    C=st.integers(1, 3),
    L=st.one_of(st.integers(1, 4), st.integers(20, 45)),
    dtype=st.sampled_from(FLOATS),
    seed=st.integers(0, 99),
)
def test_bias_grad_matches_numpy_and_cpu(N, C, L, dtype, seed):
    gy = quarters(np.random.default_rng(seed), (N, C, L), dtype)
    zero = dtype(0)
    first, second = run_twice(bias_grad_kernel, [((C,), dtype)], on_cuda(gy.ravel()), C, L, zero)
    cpu = np.empty(C, dtype)
    bias_grad_kernel(cpu, gy.ravel(), C, L, zero)
    np.testing.assert_array_equal(first[0], gy.astype(np.float64).sum((0, 2)).astype(dtype))
    np.testing.assert_array_equal(first[0], cpu)
    assert_same_bits(first, second)


def test_float32_bias_grad_of_random_values_is_close_and_deterministic():
    gy = np.random.default_rng(3).standard_normal((5, 2, 41)).astype(np.float32)
    first, second = run_twice(
        bias_grad_kernel, [((2,), np.float32)], on_cuda(gy.ravel()), 2, 41, np.float32(0)
    )
    np.testing.assert_allclose(first[0], gy.astype(np.float64).sum((0, 2)), rtol=1e-5)
    assert_same_bits(first, second)


# ----------------------------------------------------------------------------- launch plans
def _plan(kernel, *args):
    if kernel._cuda_launch is None:
        kernel._cuda_launch = kernel.cuda_factory()
    return kernel._cuda_launch.stages(*args)


def test_gpu_plans_spread_a_sum_to_one_value_over_the_device():
    # the GPU plan, made here from NumPy arrays (nothing is launched)
    n = 1 << 22
    stages = _plan(sum_rows_kernel, np.empty(1), np.empty(n), n, np.float64(0))
    (_, blocks1, threads1, _, args1), (_, blocks2, _, _, args2) = stages
    assert blocks1 * threads1 >= two_stage.GPU_TARGET_BLOCKS * two_stage.GPU_BLOCK
    assert args1[0].size == blocks1 and blocks2 == 1 and args2[1] is args1[0]
    # many short rows: one thread each; many long rows: one block each, no second stage
    (only,) = _plan(sum_rows_kernel, np.empty(4096), np.empty(4096 * 8), 8, np.float64(0))
    assert only[1] * only[2] >= 4096 and only[4][2] == 8
    (only,) = _plan(sum_rows_kernel, np.empty(4096), np.empty(4096 * 512), 512, np.float64(0))
    assert only[1] == 4096 and only[2] == two_stage.GPU_BLOCK


def test_gpu_plans_of_argmax_columns_and_bias_grad_use_two_stages():
    n = 1 << 20
    assert len(_plan(max_rows_kernel, np.empty(1), np.empty(1, np.int64), np.empty(n), n)) == 2
    assert len(_plan(sum_columns_kernel, np.empty(3), np.empty(3 * n), n, np.float64(0))) == 2
    stages = _plan(bias_grad_kernel, np.empty(4), np.empty(64 * 4 * 1024), 4, 1024, np.float64(0))
    assert len(stages) == 2 and stages[0][1] >= 4 * 32


# ----------------------------------------------------------------------------- ops
def _reductions_to_one_value(x, t):
    """(name, function of minicbam tensors) for the ops that reduce to one value."""
    F = mc.ops
    return {
        "sum": x.sum(),
        "mean": x.mean(),
        "var": x.var(),
        "amax": x.amax(),
        "mse": F.mse_loss(x, t),
        "l1": F.l1_loss(x, t),
        "bce_logits": F.binary_cross_entropy_with_logits(x, t.sigmoid()),
        "bce": F.binary_cross_entropy(x.sigmoid(), t.sigmoid()),
    }


def _oracle(x, t):
    s = 1 / (1 + np.exp(-x))
    p = 1 / (1 + np.exp(-t))
    return {
        "sum": x.sum(),
        "mean": x.mean(),
        "var": x.var(ddof=1),
        "amax": x.max(),
        "mse": ((x - t) ** 2).mean(),
        "l1": np.abs(x - t).mean(),
        "bce_logits": -(p * np.log(s) + (1 - p) * np.log(1 - s)).mean(),
        "bce": -(p * np.log(s) + (1 - p) * np.log(1 - s)).mean(),
    }


@given(n=st.integers(65, 200), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 99))
def test_reductions_to_one_value_on_cuda_match_the_oracle_and_cpu(n, dtype, seed):
    # n > 64: the simulator's plan splits the one row over 2 to 4 blocks
    rng = np.random.default_rng(seed)
    x, t = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    on = {
        d: _reductions_to_one_value(mc.tensor(x, device=d), mc.tensor(t, device=d))
        for d in ("cpu", "cuda")
    }
    want = _oracle(x.astype(np.float64), t.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name, value in want.items():
        got = on["cuda"][name].numpy()
        np.testing.assert_allclose(got, value, rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_allclose(got, on["cpu"][name].numpy(), rtol=tol, atol=tol, err_msg=name)
    assert int(mc.tensor(x, device="cuda").argmax().numpy()) == int(np.argmax(x))


def test_a_sum_to_one_value_runs_two_stages():
    x = mc.tensor(np.arange(150, dtype=np.float64), device="cuda")
    with count_device_events() as events:
        total = x.sum()
    (first, blocks1, *_), (second, blocks2, *_) = events.launch_log
    assert first == second == "sum_segments" and blocks1 > 1 and blocks2 == 1
    assert float(total.numpy()) == 150 * 149 / 2


def test_clip_grad_norm_on_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s) for s in [(70,), (3, 40), (5,)]]
    norms = {}
    for d in ("cpu", "cuda"):
        params = [mc.tensor(g * 0, device=d, requires_grad=True) for g in grads]
        for p, g in zip(params, grads):
            p.grad = mc.tensor(g, device=d)
        norms[d] = (
            optim.clip_grad_norm_(params, 1.0),
            optim.clip_grad_norm_(params, 10.0, norm_type=np.inf),
            [p.grad.numpy() for p in params],
        )
    want = np.sqrt(sum((g * g).sum() for g in grads))
    np.testing.assert_allclose(norms["cuda"][0], want, rtol=1e-12)
    np.testing.assert_allclose(norms["cuda"][0], norms["cpu"][0], rtol=1e-12)
    np.testing.assert_allclose(norms["cuda"][1], norms["cpu"][1], rtol=1e-12)
    for a, b in zip(norms["cuda"][2], norms["cpu"][2]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
