"""batch_norm: training and eval forward vs a loop oracle and PyTorch, the in-place running-stat
update, float64 gradient checks for x, weight and bias, CUDA parity, errors."""

import numpy as np
import pytest
import reference_pool as ref
from helpers import (
    assert_cuda_parity,
    assert_gradcheck,
    assert_matches_oracle,
    leaf,
    numerical_gradient,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam.ops.batch_norm import batch_norm

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-5}, np.float64: {"rtol": 1e-10, "atol": 1e-12}}
seeds = st.integers(0, 2**16)


@st.composite
def bn_shapes(draw):
    """(N, C) or (N, C, H, W) with more than one value per channel."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(), (1, 1), (2, 3), (3, 1)]))
    shape = (n, c) + spatial
    if int(np.prod(shape)) // c == 1:
        shape = (n + 1,) + shape[1:]
    return shape


def bn_arrays(shape, seed, dtype=np.float64):
    """x (with a non-zero mean), weight, bias, running_mean, running_var."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.7
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    return [a.astype(dtype) for a in (x, w, b, rm, rv)]


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@given(
    shape=bn_shapes(), affine=st.booleans(), momentum=st.sampled_from([0.1, 0.5, 1.0]), seed=seeds
)
def test_batch_norm_matches_oracle(dtype, training, shape, affine, momentum, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed, dtype)
    w, b = (w, b) if affine else (None, None)
    trm, trv = mc.tensor(rm), mc.tensor(rv)
    y = batch_norm(
        mc.tensor(x),
        trm,
        trv,
        w if w is None else mc.tensor(w),
        b if b is None else mc.tensor(b),
        training,
        momentum,
        1e-5,
    )
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training, momentum, 1e-5)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL[dtype])
    np.testing.assert_allclose(trm.numpy(), rm_ref, **TOL[dtype])
    np.testing.assert_allclose(trv.numpy(), rv_ref, **TOL[dtype])


@settings(max_examples=6)
@given(shape=bn_shapes(), training=st.booleans(), seed=seeds)
def test_batch_norm_matches_torch(shape, training, seed):
    torch = pytest.importorskip("torch")
    x, w, b, rm, rv = bn_arrays(shape, seed)
    ours = [leaf(x), leaf(w), leaf(b)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    trm, trv, t_rm, t_rv = mc.tensor(rm), mc.tensor(rv), torch.tensor(rm), torch.tensor(rv)
    y = batch_norm(ours[0], trm, trv, ours[1], ours[2], training, 0.3, 1e-3)
    ty = torch.nn.functional.batch_norm(
        theirs[0], t_rm, t_rv, theirs[1], theirs[2], training, 0.3, 1e-3
    )
    gy = np.random.default_rng(seed).standard_normal(shape)
    y.backward(mc.tensor(gy, dtype=np.float64))
    ty.backward(torch.tensor(gy))
    tol = TOL[np.float64]
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(trm.numpy(), t_rm.numpy(), **tol)
    np.testing.assert_allclose(trv.numpy(), t_rv.numpy(), **tol)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), **tol)


def test_running_stats_updated_in_place_with_unbiased_variance():
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
    rm, rv = mc.zeros(2, dtype=np.float64), mc.ones(2, dtype=np.float64)
    rm_data, rv_data = rm.data, rv.data
    # eps > 0: PyTorch (and minicbam) refuse eps = 0 in training; 1e-12 is below rtol here
    y = batch_norm(mc.tensor(x), rm, rv, training=True, momentum=0.25, eps=1e-12)
    assert rm.data is rm_data and rv.data is rv_data
    np.testing.assert_allclose(rm.numpy(), 0.25 * np.array([3.0, 30.0]))
    np.testing.assert_allclose(rv.numpy(), 0.75 + 0.25 * np.array([4.0, 700.0]))
    # normalised with the biased variance
    np.testing.assert_allclose(y.numpy()[:, 0], (x[:, 0] - 3.0) / np.sqrt(8.0 / 3.0))


def test_training_without_running_stats_and_eval_leaves_them():
    x, _, _, rm, rv = bn_arrays((3, 2, 2, 2), 0)
    y = batch_norm(mc.tensor(x), None, None, training=True)
    np.testing.assert_allclose(
        y.numpy(), ref.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)[0], **TOL[np.float64]
    )
    trm, trv = mc.tensor(rm), mc.tensor(rv)
    batch_norm(mc.tensor(x), trm, trv, training=False)
    np.testing.assert_array_equal(trm.numpy(), rm)
    np.testing.assert_array_equal(trv.numpy(), rv)


# ----------------------------------------------------------------------------- gradients
@given(shape=bn_shapes(), training=st.booleans(), seed=seeds)
def test_batch_norm_gradcheck(shape, training, seed):
    x, w, b, rm, rv = bn_arrays(shape, seed)
    # running stats only in eval: in training the many forward calls would keep updating them
    stats = (None, None) if training else (mc.tensor(rm), mc.tensor(rv))
    assert_gradcheck(lambda t, tw, tb: batch_norm(t, *stats, tw, tb, training), x, w, b)


@given(shape=bn_shapes(), seed=seeds)
def test_batch_norm_gradcheck_without_affine(shape, seed):
    x = bn_arrays(shape, seed)[0]
    assert_gradcheck(lambda t: batch_norm(t, None, None, training=True), x)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_batch_norm_cuda_parity(dtype, shape):
    x, w, b, rm, rv = bn_arrays(shape, 5, dtype)
    assert_cuda_parity(
        lambda t, tw, tb: batch_norm(t, None, None, tw, tb, True), x, w, b, rtol=1e-4, atol=1e-5
    )
    stats = {dev: (mc.tensor(rm, device=dev), mc.tensor(rv, device=dev)) for dev in ("cpu", "cuda")}
    for dev in ("cpu", "cuda"):
        for _ in range(2):
            batch_norm(
                mc.tensor(x, device=dev),
                *stats[dev],
                mc.tensor(w, device=dev),
                mc.tensor(b, device=dev),
                training=True,
                momentum=0.2,
            )
    for cpu, gpu in zip(stats["cpu"], stats["cuda"]):
        assert gpu.device == "cuda"
        np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-5, atol=1e-6)
    y_cpu = batch_norm(mc.tensor(x), *stats["cpu"], mc.tensor(w), mc.tensor(b))
    y_gpu = batch_norm(
        mc.tensor(x, device="cuda"),
        *stats["cuda"],
        mc.tensor(w, device="cuda"),
        mc.tensor(b, device="cuda"),
    )
    np.testing.assert_allclose(y_gpu.numpy(), y_cpu.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@settings(max_examples=4)
@given(shape=bn_shapes(), training=st.booleans(), seed=seeds)
def test_batch_norm_cuda_matches_oracle(shape, training, seed):
    # the CUDA kernels against the loop oracle (its gradients by central differences):
    # parity cannot see a bug in a body both devices share
    x, w, b, rm, rv = bn_arrays(shape, seed)
    trm, trv = mc.tensor(rm, device="cuda"), mc.tensor(rv, device="cuda")

    def fn(t, tw, tb):
        return batch_norm(t, trm, trv, tw, tb, training, 0.3, 1e-5)

    def oracle(x, w, b, gy):
        def y_of(x_=x, w_=w, b_=b):
            return ref.batch_norm(x_, rm, rv, w_, b_, training, 0.3, 1e-5)[0]

        grads = [
            numerical_gradient(lambda v: y_of(x_=v), x, gy),
            numerical_gradient(lambda v: y_of(w_=v), w, gy),
            numerical_gradient(lambda v: y_of(b_=v), b, gy),
        ]
        return y_of(), grads

    assert_matches_oracle(fn, [x, w, b], oracle, "cuda", rtol=1e-6, atol=1e-7)
    _, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, training, 0.3, 1e-5)
    np.testing.assert_allclose(trm.numpy(), rm_ref, rtol=1e-10)
    np.testing.assert_allclose(trv.numpy(), rv_ref, rtol=1e-10)


# ----------------------------------------------------------------------------- errors
def test_batch_norm_errors():
    x = mc.tensor(np.zeros((2, 3, 2, 2)))
    c3, c4 = mc.zeros(3, dtype=np.float64), mc.zeros(4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"batch_norm: expected an input of 2 or more dim.*\(3,\)"):
        batch_norm(mc.tensor(np.zeros(3)), None, None, training=True)
    with pytest.raises(
        ValueError, match=r"running_mean should contain 3 elements.*got shape \(4,\)"
    ):
        batch_norm(x, c4, c3)
    with pytest.raises(ValueError, match=r"batch_norm: weight should contain 3 elements"):
        batch_norm(x, c3, c3, weight=c4)
    with pytest.raises(
        ValueError,
        match=r"Expected more than 1 value per channel when training, "
        r"got input size \(1, 3\)",
    ):
        batch_norm(mc.tensor(np.zeros((1, 3))), c3, c3, training=True)
    with pytest.raises(ValueError, match="must be defined in evaluation mode"):
        batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="batch_norm: momentum must be a float"):
        batch_norm(x, c3, c3, training=True, momentum=None)
    with pytest.raises(TypeError, match="batch_norm: weight has dtype float32"):
        batch_norm(x, c3, c3, weight=mc.zeros(3))
