"""minicbam: a small reverse-mode autodiff framework with Numba CPU and numba.cuda kernels.

``import minicbam as mc`` gives the PyTorch-shaped tensor API (docs/api.md). The subpackages
``mc.nn``, ``mc.optim``, ``mc.models``, ``mc.data``, ``mc.interop``, ``mc.viz`` (and
``mc.distributed`` where installed) are imported on first access, as ``torch.nn`` is there
after ``import torch``, so that ``import minicbam`` stays as fast as before.
"""

import importlib
import os

# numba's OpenMP threads and OpenBLAS's spin-wait on the same 2 cores unless told to sleep;
# switching between them then costs ~8 ms each time (docs/design.md, "Measured facts"). Must
# precede the first parallel call; libgomp reads it when it loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from minicbam import cpu_memory, kernel_cache

cpu_memory.configure()  # freed arrays stay in the process for reuse (cpu_memory.py says why)
kernel_cache.configure()  # before any kernel is decorated (minicbam/kernel_cache.py says why)

from minicbam.device import cuda_is_available
from minicbam.function import (
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_detect_anomaly,
    set_grad_enabled,
)
from minicbam.gradcheck import GradcheckError, gradcheck
from minicbam.ops import cat, stack
from minicbam.io.serialization import load, save
from minicbam.tensor import (
    Tensor,
    arange,
    bool_,
    float32,
    float64,
    full,
    int8,
    int16,
    int32,
    int64,
    manual_seed,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    uint8,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"

__all__ = [
    "GradcheckError",
    "Tensor",
    "arange",
    "bool_",
    "cat",
    "cuda_is_available",
    "detect_anomaly",
    "enable_grad",
    "float32",
    "float64",
    "full",
    "gradcheck",
    "int8",
    "int16",
    "int32",
    "int64",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "no_grad",
    "ones",
    "ones_like",
    "rand",
    "randn",
    "save",
    "set_detect_anomaly",
    "set_grad_enabled",
    "stack",
    "tensor",
    "uint8",
    "zeros",
    "zeros_like",
]

# Subpackages reachable as attributes, imported on first use (see the module docstring).
LAZY_SUBMODULES = ("nn", "optim", "models", "data", "interop", "viz", "distributed")


def __getattr__(name):
    """``mc.nn`` and friends: import the subpackage (Python then caches it as an attribute)."""
    if name in LAZY_SUBMODULES:
        try:
            return importlib.import_module(f"minicbam.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"minicbam.{name}":  # the subpackage exists but its import failed
                raise
    raise AttributeError(f"module 'minicbam' has no attribute {name!r}")


def __dir__():
    import importlib.util

    present = [n for n in LAZY_SUBMODULES if importlib.util.find_spec(f"minicbam.{n}")]
    return sorted(set(globals()) | set(present))
