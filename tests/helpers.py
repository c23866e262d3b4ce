"""Shared test helpers: hypothesis strategies, gradient checks and CPU/CUDA parity."""

import numpy as np
from hypothesis import strategies as st

import minicbam as mc


def shapes(min_dims=1, max_dims=4, min_side=1, max_side=5):
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(
        tuple
    )


def arrays(shape, seed, low=-2.0, high=2.0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)


def tied(shape, seed, dtype=np.float64, levels=3):
    """Values from a few levels (-1, 0, 1 for 3), so that max windows, rows and planes hold
    ties; the winner must then be the FIRST maximum (finite differences are undefined there:
    compare gradients with an oracle's backward)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, levels, size=shape) - (levels - 1) / 2).astype(dtype)


def distinct_or_tied(shape, seed, ties, dtype=np.float64):
    """``tied`` values, or a scaled permutation in [-2, 2) with no ties at all."""
    if ties:
        return tied(shape, seed, dtype)
    size = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(size).reshape(shape)
    return (perm * (4.0 / max(size, 1)) - 2.0).astype(dtype)


def leaf(array, requires_grad=True, device="cpu"):
    return mc.tensor(array, dtype=array.dtype, device=device, requires_grad=requires_grad)


def assert_gradcheck(fn, *arrays_in, atol=1e-5, rtol=1e-3, eps=1e-6):
    """Finite-difference check of ``fn`` at float64 copies of ``arrays_in``."""
    inputs = [leaf(np.asarray(a, dtype=np.float64)) for a in arrays_in]
    assert mc.gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol)


def cotangent(shape, dtype=np.float64, seed=0):
    """The fixed random output gradient that ``run_with_grads`` uses."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run_with_grads(fn, arrays_in, device, seed=0):
    """Outputs and input gradients of ``fn`` on ``device`` for a fixed random cotangent."""
    inputs = [leaf(a, device=device) for a in arrays_in]
    y = fn(*inputs)
    v = cotangent(y.shape, y.dtype, seed)
    (y * mc.tensor(v, dtype=y.dtype, device=device)).sum().backward()
    return y.numpy(), [x.grad.numpy() for x in inputs]


def assert_cuda_parity(fn, *arrays_in, rtol=1e-5, atol=1e-6):
    """Forward and gradients agree between the CPU and CUDA (hardware or simulator)."""
    y_cpu, g_cpu = run_with_grads(fn, arrays_in, "cpu")
    y_gpu, g_gpu = run_with_grads(fn, arrays_in, "cuda")
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=rtol, atol=atol)
    for a, b in zip(g_gpu, g_cpu):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def numerical_gradient(f, x, gy, eps=1e-6):
    """d sum(f(x) gy) / dx by central differences of a NumPy oracle ``f`` (float64): an
    oracle's backward for ops whose oracle has none."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = np.sum(np.asarray(f(x)) * gy)
        x[i] = saved - eps
        down = np.sum(np.asarray(f(x)) * gy)
        x[i] = saved
        g[i] = (up - down) / (2 * eps)
    return g


def assert_matches_oracle(fn, arrays_in, oracle, device, rtol=1e-12, atol=1e-12, seed=0):
    """Forward and input gradients of ``fn`` on ``device`` agree with ``oracle(*arrays_in, gy)``,
    which returns (y, [gradients]) for the cotangent gy that ``run_with_grads`` uses. Parity
    with the CPU cannot catch a bug in a body both devices share; an oracle can."""
    y, grads = run_with_grads(fn, arrays_in, device, seed)
    y_ref, grads_ref = oracle(*arrays_in, cotangent(y.shape, y.dtype, seed))
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=rtol, atol=atol)


def randomize_(module, seed=0, scale=1.0):
    """Random parameters and running statistics (variances in [0.5, 1.5]), so that no check
    passes by symmetry; ``num_batches_tracked`` is kept."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = value
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, value.shape)
        else:
            sd[key] = rng.standard_normal(value.shape) * scale
    module.load_state_dict(sd)
    return module
