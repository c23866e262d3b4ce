"""Matrix product with PyTorch's ``matmul`` semantics.

    y[..., i, j] = sum_k a[..., i, k] * b[..., k, j]       batch dims broadcast (NumPy rules)
    ga = sum_to(gy @ b^T, a.shape)                          (summed over broadcast batch dims)
    gb = sum_to(a^T @ gy, b.shape)

1-D operands follow torch: a vector a (K,) is a row (1, K) and b (K,) a column (K, 1), and the
added dimension is removed from the result (reshapes, so their gradients come for free).
When b is a plain matrix and a is batched, gb = sum_batch a_i^T gy_i is one GEMM of the
flattened (B*M, K) and (B*M, N) matrices, with no per-batch partial products to sum.
The products are ``gemm`` (gemm.py): NumPy BLAS on the CPU, a tiled kernel on CUDA; both
read a transposed operand in place, so b^T and a^T are never materialised.
"""

import numpy as np

from minicbam.function import Function, check_same_device
from minicbam.kernels.gemm import matmul_new
from minicbam.ops.reduce import sum_to_array


class MatMul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return matmul_new(a, b)

    def backward(self, gy):
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to_array(matmul_new(gy, b, tb=True), a.shape)
        if self.needs_input_grad[1]:
            if b.ndim == 2 and a.ndim > 2:
                rows = int(np.prod(tuple(a.shape)[:-1], dtype=np.int64))  # B*M
                gb = matmul_new(
                    a.reshape((rows, b.shape[0])), gy.reshape((rows, b.shape[1])), ta=True
                )
            else:
                gb = sum_to_array(matmul_new(a, gy, ta=True), b.shape)
        return ga, gb


def _check(a, b):
    check_same_device("matmul", (a, b))
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"matmul: both arguments need at least 1 dimension, got shapes {a.shape} and {b.shape}"
        )
    if a.dtype != b.dtype:
        raise TypeError(
            f"matmul: expected both operands of one dtype, got {a.dtype} and {b.dtype} "
            f"(shapes {a.shape} and {b.shape})"
        )
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"matmul: expected floating-point operands, got dtype {a.dtype}")
    if a.shape[-1] != b.shape[0 if b.ndim == 1 else -2]:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied "
            f"({a.shape[-1]} != {b.shape[0 if b.ndim == 1 else -2]})"
        )
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: batch dimensions of shapes {a.shape} and {b.shape} cannot be broadcast"
        ) from None


def matmul(a, b):
    """``a @ b`` for tensors of 1 or more dimensions, as ``torch.matmul``."""
    _check(a, b)
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    y = MatMul()(a2, b2)
    # drop the dimension a vector operand was given
    shape = y.shape[:-2] + (y.shape[-2],) * (a.ndim > 1) + (y.shape[-1],) * (b.ndim > 1)
    return y if shape == y.shape else y.reshape(shape)
