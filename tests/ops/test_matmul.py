"""matmul: forward vs the loop oracle and PyTorch, gradients, broadcasting, CUDA parity, errors."""

import numpy as np
import pytest
import reference_conv as ref
from helpers import arrays, assert_cuda_parity, assert_gradcheck, assert_matches_oracle, leaf
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.matmul import matmul


@st.composite
def matmul_shapes(draw, max_side=5, max_batch_dims=2):
    """Operand shapes torch.matmul accepts: 1-D vectors, 2-D, and broadcast batch dims.

    The broadcast structure is drawn first: ``stretch_b`` / ``stretch_a`` give that operand
    the full batch rank with at least one size-1 dimension that the other operand stretches
    (its gradient must be summed over it); ``free`` draws each operand's rank and size-1
    dimensions independently (vectors included)."""
    m, k, n = (draw(st.integers(1, max_side)) for _ in range(3))
    kind = draw(st.sampled_from(["free", "stretch_b", "stretch_a"]))
    min_batch = 0 if kind == "free" else 1
    batch = tuple(draw(st.lists(st.integers(2, 3), min_size=min_batch, max_size=max_batch_dims)))

    def operand(rows, cols, vector_ok):
        if vector_ok and draw(st.booleans()) and draw(st.booleans()):
            return (k,)
        lead = batch[draw(st.integers(0, len(batch))) :]
        lead = tuple(1 if draw(st.booleans()) else s for s in lead)  # broadcast some dims
        return lead + (rows, cols)

    def stretched(rows, cols):
        ones = draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
        ones[draw(st.integers(0, len(batch) - 1))] = True  # at least one stretched dim
        return tuple(1 if one else s for one, s in zip(ones, batch)) + (rows, cols)

    if kind == "stretch_b":
        return batch[draw(st.integers(0, len(batch) - 1)) :] + (m, k), stretched(k, n)
    if kind == "stretch_a":
        return stretched(m, k), batch[draw(st.integers(0, len(batch) - 1)) :] + (k, n)
    return operand(m, k, True), operand(k, n, True)


def _sum_to(g, shape):
    """NumPy: sum g over the dimensions broadcasting added or stretched to reach shape."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(d for d, s in enumerate(shape) if s == 1), keepdims=True)


def matmul_oracle(a, b, gy):
    """(y, [ga, gb]) from the loop oracle for y and NumPy for ga = gy b^T, gb = a^T gy."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = np.reshape(
        gy, np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1])
    )
    ga = _sum_to(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
    gb = _sum_to(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
    return ref.matmul(a, b), [ga, gb]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(shapes=matmul_shapes(), seed=st.integers(0, 2**31))
def test_forward_matches_oracle(dtype, shapes, seed):
    a, b = arrays(shapes[0], seed, dtype=dtype), arrays(shapes[1], seed + 1, dtype=dtype)
    y = matmul(leaf(a, False), leaf(b, False))
    expected = ref.matmul(a, b)
    assert y.dtype == dtype and y.shape == expected.shape == np.matmul(a, b).shape
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(y.numpy(), expected, **tol)


@given(shapes=matmul_shapes(max_side=4), seed=st.integers(0, 2**31))
def test_gradcheck(shapes, seed):
    assert_gradcheck(matmul, arrays(shapes[0], seed), arrays(shapes[1], seed + 1))


@given(shapes=matmul_shapes(), seed=st.integers(0, 2**31))
def test_gradients_match_oracle(shapes, seed):
    a, b = arrays(shapes[0], seed), arrays(shapes[1], seed + 1)
    assert_matches_oracle(matmul, [a, b], matmul_oracle, "cpu")


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((4,), (4,)),
        ((4,), (2, 4, 3)),
        ((2, 3, 4), (4,)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((3, 4), (2, 4, 5)),
        ((2, 1, 3, 4), (1, 3, 4, 2)),
    ],
)
def test_matches_torch(a_shape, b_shape):
    torch = pytest.importorskip("torch")
    a, b = arrays(a_shape, 1), arrays(b_shape, 2)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.matmul(ta, tb)
    gy = arrays(tuple(ty.shape), 3)
    ty.backward(torch.tensor(gy))
    ma, mb = leaf(a), leaf(b)
    y = matmul(ma, mb)
    y.backward(mc.tensor(gy, dtype=np.float64))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ma.grad.numpy(), ta.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mb.grad.numpy(), tb.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_operator_and_empty_inner_dimension():
    a, b = leaf(np.zeros((3, 0))), leaf(np.zeros((0, 2)))
    y = a @ b
    assert y.shape == (3, 2) and not y.numpy().any()
    y.sum().backward()
    assert a.grad.shape == (3, 0) and b.grad.shape == (0, 2)


@pytest.mark.cuda
@settings(max_examples=4)
@given(shapes=matmul_shapes(max_side=5, max_batch_dims=1), seed=st.integers(0, 2**31))
def test_cuda_parity(shapes, seed):
    a, b = arrays(shapes[0], seed), arrays(shapes[1], seed + 1)
    assert_cuda_parity(matmul, a, b, rtol=1e-10, atol=1e-12)
    assert_matches_oracle(matmul, [a, b], matmul_oracle, "cuda", rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((2, 3, 5, 9), (2, 1, 9, 4)), ((3, 9, 5), (1, 5, 10)), ((1, 2, 4, 3), (3, 1, 3, 2))],
)
def test_cuda_broadcast_batches_match_oracle(a_shape, b_shape):
    # a stretched size-1 batch dim of b (trailing: b's batch index has a divisor > 1) and of a;
    # k = 9 and n = 10 leave partial tiles of 8 (the simulator's tile)
    a, b = arrays(a_shape, 1), arrays(b_shape, 2)
    assert_matches_oracle(matmul, [a, b], matmul_oracle, "cuda", rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_parity_ragged_tiles(dtype):
    # 13 x 16 x 11: partial tiles on every edge for tile 8 (simulator) and 16 (GPU)
    a, b = arrays((13, 16), 1, dtype=dtype), arrays((16, 11), 2, dtype=dtype)
    assert_cuda_parity(matmul, a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_broadcast_not_expressible_as_one_stride():
    # b's batch (2, 1, 3) against a's (2, 4, 1): both operands are materialised on CUDA
    a, b = arrays((2, 4, 1, 2, 3), 1), arrays((2, 1, 3, 3, 2), 2)
    assert_cuda_parity(matmul, a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- errors
def _t(shape, dtype=np.float32):
    return mc.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize(
    "a_shape, b_shape, words",
    [
        ((3, 4), (5, 2), ["matmul", "(3, 4)", "(5, 2)"]),
        ((4,), (3,), ["matmul", "(4,)", "(3,)"]),
        ((2, 3, 4), (3, 4, 5), ["matmul", "broadcast", "(2, 3, 4)", "(3, 4, 5)"]),
        ((), (3,), ["matmul", "at least 1 dimension"]),
    ],
)
def test_shape_errors(a_shape, b_shape, words):
    with pytest.raises(ValueError) as info:
        matmul(_t(a_shape), _t(b_shape))
    for word in words:
        assert word in str(info.value)


def test_dtype_mismatch():
    with pytest.raises(TypeError, match=r"matmul.*float32.*float64"):
        matmul(_t((2, 3)), _t((3, 2), np.float64))


@pytest.mark.cuda
def test_device_mismatch():
    with pytest.raises(RuntimeError, match="matmul"):
        matmul(mc.tensor(np.zeros((2, 3), np.float32), device="cuda"), _t((3, 2)))


@pytest.mark.parametrize(
    "a_shape, b_shape, ta, tb",
    [
        ((1, 64, 576), (3, 576, 1024), False, False),  # split along rows of op(a)
        ((6, 64, 1024), (6, 576, 1024), False, True),  # split along the batch
        ((1, 64, 576), (5, 64, 1024), True, False),
        ((2, 1, 64, 200), (1, 7, 200, 300), False, False),  # broadcast batch dims
        ((512, 512), (512, 512), False, False),
    ],
)
def test_cpu_threaded_products_equal_numpy(a_shape, b_shape, ta, tb):
    # big enough for gemm's CPU pool: the pieces give np.matmul's product to float32
    # rounding. Not bit for bit: OpenBLAS's Haswell sgemm kernel rounds a product split into
    # row or column pieces differently from the whole (last bits), its SkylakeX kernel not.
    # Bound: each of the two results is within K * eps * (|a| |b|) of the exact product.
    from minicbam.kernels.gemm import gemm

    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    op_a = np.swapaxes(a, -1, -2) if ta else a
    op_b = np.swapaxes(b, -1, -2) if tb else b
    expected = np.matmul(op_a, op_b)
    out = np.empty(expected.shape, np.float32)
    gemm(out, a, b, ta, tb)
    exact = np.matmul(op_a.astype(np.float64), op_b.astype(np.float64))
    bound = op_a.shape[-1] * np.finfo(np.float32).eps * np.matmul(np.abs(op_a), np.abs(op_b))
    assert np.all(np.abs(out - exact) <= bound)
    assert np.all(np.abs(expected - exact) <= bound)
    assert np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()  # last bits only
