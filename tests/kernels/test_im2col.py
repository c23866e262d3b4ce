"""im2col and col2im (minicbam/kernels/im2col.py) at the kernel level: the CUDA kernels (one
thread per col element; col2im a gather per input element) on the simulator against the
loop oracles and against the CPU kernels, over drawn strides, dilations and paddings
(padding % stride != 0 included), float32 and float64."""

import numpy as np
import pytest
import reference_conv as ref
from hypothesis import given
from hypothesis import strategies as st
from numba import cuda  # a module global: the simulator swaps it for its fake module

from minicbam.kernels.im2col import col2im, im2col

pytestmark = pytest.mark.cuda
DTYPES = [np.float32, np.float64]


@st.composite
def geometries(draw):
    """(x shape, geom) with at least one output position; the bottom and right padding are
    drawn apart from the top and left ones (geom holds only those and OH, OW)."""
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    pb, pr = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    span_h, span_w = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    H = draw(st.integers(max(1, span_h - ph - pb), max(1, span_h - ph - pb) + 4))
    W = draw(st.integers(max(1, span_w - pw - pr), max(1, span_w - pw - pr) + 4))
    OH, OW = (H + ph + pb - span_h) // sh + 1, (W + pw + pr - span_w) // sw + 1
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    return (N, C, H, W), (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW)


def _on_cuda(fn, out_shape, dtype, a, geom):
    out = cuda.device_array(out_shape, dtype)
    fn(out, cuda.to_device(a), geom)
    return out.copy_to_host()


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=geometries(), seed=st.integers(0, 2**16))
def test_im2col_cuda_matches_oracle_and_cpu(dtype, case, seed):
    x_shape, geom = case
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(dtype)
    N, C = x_shape[:2]
    col_shape = (N, C * geom[0] * geom[1], geom[8] * geom[9])
    expected = ref.im2col(x, geom)
    col_cpu = im2col(np.full(col_shape, np.nan, dtype), x, geom)
    col_gpu = _on_cuda(im2col, col_shape, dtype, x, geom)
    np.testing.assert_array_equal(col_gpu, expected)  # a copy: exact
    np.testing.assert_array_equal(col_cpu, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=geometries(), seed=st.integers(0, 2**16))
def test_col2im_cuda_matches_oracle_and_cpu(dtype, case, seed):
    x_shape, geom = case
    N, C = x_shape[:2]
    col_shape = (N, C * geom[0] * geom[1], geom[8] * geom[9])
    gcol = np.random.default_rng(seed).standard_normal(col_shape).astype(dtype)
    gx_cpu = col2im(np.full(x_shape, np.nan, dtype), gcol, geom)
    gx_gpu = _on_cuda(col2im, x_shape, dtype, gcol, geom)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-13, "atol": 1e-13}
    np.testing.assert_allclose(gx_gpu, ref.col2im(gcol.astype(np.float64), x_shape, geom), **tol)
    # the gather adds each element's taps in the CPU's order: the same bits
    np.testing.assert_array_equal(gx_gpu, gx_cpu)


def test_col2im_cuda_overlapping_taps_and_padding_remainders():
    # stride 2 with padding 3 (3 % 2 != 0), dilation 2: elements read by several taps, by
    # none (w at odd offsets of the strided grid), and taps reading padding only
    x_shape, geom = (1, 2, 7, 6), (3, 3, 2, 2, 3, 1, 2, 1, 5, 3)
    gcol = np.arange(np.prod((1, 18, 15)), dtype=np.float64).reshape(1, 18, 15) % 7 - 3
    expected = ref.col2im(gcol, x_shape, geom)
    assert (expected == 0).any() and (expected != 0).any()
    np.testing.assert_array_equal(_on_cuda(col2im, x_shape, np.float64, gcol, geom), expected)
