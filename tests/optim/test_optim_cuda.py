"""SGD with momentum, Adam and gradient clipping on CUDA tensors match the CPU run and the
NumPy update formulas (the fused Adam kernel is one body on both devices: parity alone
cannot see a bug in it); state saved from CUDA parameters loads onto CPU ones."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_optimizers import adam_reference, make_grads, make_params, per_param_grads, run_minicbam

import minicbam as mc
from minicbam import optim

SHAPES = [(5,), (2, 3)]


def run(device, build, steps=3, clip=None):
    rng = np.random.default_rng(0)
    params = [
        mc.tensor(rng.standard_normal(s), dtype=mc.float64, device=device, requires_grad=True)
        for s in SHAPES
    ]
    opt = build(params)
    for _ in range(steps):
        for p in params:
            p.grad = mc.tensor(rng.standard_normal(p.shape), dtype=mc.float64, device=device)
        if clip is not None:
            optim.clip_grad_norm_(params, clip)
        opt.step()
    assert all(p.device == device for p in params)
    return [p.numpy() for p in params], opt


@pytest.mark.cuda
@pytest.mark.parametrize(
    "build",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda ps: optim.Adam(ps, lr=0.05, weight_decay=1e-2),
        lambda ps: optim.AdamW(ps, lr=0.05, amsgrad=True),
    ],
    ids=["sgd-momentum", "adam", "adamw-amsgrad"],
)
def test_cuda_matches_cpu(build):
    cpu, cpu_opt = run("cpu", build, clip=1.0)
    gpu, gpu_opt = run("cuda", build, clip=1.0)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for state in gpu_opt.state.values():
        assert all(v.device == "cuda" for k, v in state.items() if k != "step")
    # state saved on CUDA loads onto CPU parameters (and is equal to the CPU run's)
    cpu_sd, gpu_sd = cpu_opt.state_dict(), gpu_opt.state_dict()
    for i, entries in gpu_sd["state"].items():
        for key, value in entries.items():
            np.testing.assert_allclose(value, cpu_sd["state"][i][key], rtol=1e-12, atol=1e-14)
    cpu_opt.load_state_dict(gpu_sd)
    assert all(
        v.device == "cpu" for s in cpu_opt.state.values() for k, v in s.items() if k != "step"
    )


@pytest.mark.cuda
@settings(max_examples=4)
@given(
    cls=st.sampled_from([optim.Adam, optim.AdamW]),
    amsgrad=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_cuda_adam_matches_formula(cls, amsgrad, weight_decay, seed):
    # 3 x 5 = 15 elements: more than one simulated block of the grid-stride loop
    shapes = [(3, 5), (2,)]
    arrays, params = make_params(seed, shapes, device="cuda")
    grads = make_grads(seed, shapes)
    hyper = {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-3, "weight_decay": weight_decay}
    got = run_minicbam(cls(params, amsgrad=amsgrad, **hyper), params, grads)
    for i, a in enumerate(arrays):
        want = adam_reference(
            a, per_param_grads(grads, i), amsgrad=amsgrad, decoupled=cls is optim.AdamW, **hyper
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)
