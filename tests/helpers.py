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


def leaf(array, requires_grad=True, device="cpu"):
    return mc.tensor(array, dtype=array.dtype, device=device, requires_grad=requires_grad)


def assert_gradcheck(fn, *arrays_in, atol=1e-5, rtol=1e-3, eps=1e-6):
    """Finite-difference check of ``fn`` at float64 copies of ``arrays_in``."""
    inputs = [leaf(np.asarray(a, dtype=np.float64)) for a in arrays_in]
    assert mc.gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol)


def run_with_grads(fn, arrays_in, device, seed=0):
    """Outputs and input gradients of ``fn`` on ``device`` for a fixed random cotangent."""
    inputs = [leaf(a, device=device) for a in arrays_in]
    y = fn(*inputs)
    v = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    (y * mc.tensor(v, dtype=y.dtype, device=device)).sum().backward()
    return y.numpy(), [x.grad.numpy() for x in inputs]


def assert_cuda_parity(fn, *arrays_in, rtol=1e-5, atol=1e-6):
    """Forward and gradients agree between the CPU and CUDA (hardware or simulator)."""
    y_cpu, g_cpu = run_with_grads(fn, arrays_in, "cpu")
    y_gpu, g_gpu = run_with_grads(fn, arrays_in, "cuda")
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=rtol, atol=atol)
    for a, b in zip(g_gpu, g_cpu):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


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
