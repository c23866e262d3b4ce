"""Kernel builders for elementwise maps, the shared-body pattern in its simplest form.

A *body* is a scalar ``@register_jitable`` function. The same body is inlined into a CPU
loop (``prange``) and into a CUDA grid-stride loop, so both devices compute exactly the
same expression per element:

    unary_kernel(f):         out[i] = f(x[i], a, b)
    binary_kernel(f):        out[i] = f(x[i], y[i], a, b)
    binary_grads_kernel(f):  (ga[i], gb[i]) = f(g[i], x[i], y[i])   (a binary op's backward)

``a`` and ``b`` are scalar parameters (clamp bounds, an exponent, ...), converted to the
arrays' dtype by the caller so float32 stays float32 on the GPU. Arrays are 1-D views of
C-contiguous buffers of one shape. A map runs at memory speed: only arrays of
``device.LARGE_INPUT_ELEMENTS`` or more take (and compile) the parallel loop.
"""

import numpy as np
from numba import njit, prange

from minicbam import device
from minicbam.device import Kernel

cuda = None  # numba.cuda, bound on first CUDA use (device.cuda_factory)


def unary_kernel(body):
    @njit(parallel=True, cache=True)
    def unary_cpu(out, x, a, b):
        for i in prange(out.size):
            out[i] = body(x[i], a, b)

    @device.cuda_factory
    def unary_cuda():

        @cuda.jit
        def unary(out, x, a, b):
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                out[i] = body(x[i], a, b)

        return device.launcher(unary)

    return Kernel(
        cpu=unary_cpu,
        cuda=unary_cuda,
        name=f"unary[{body.__name__}]",
        parallel_from=device.LARGE_INPUT_ELEMENTS,
    )


def binary_kernel(body):
    @njit(parallel=True, cache=True)
    def binary_cpu(out, x, y, a, b):
        for i in prange(out.size):
            out[i] = body(x[i], y[i], a, b)

    @device.cuda_factory
    def binary_cuda():

        @cuda.jit
        def binary(out, x, y, a, b):
            for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
                out[i] = body(x[i], y[i], a, b)

        return device.launcher(binary)

    return Kernel(
        cpu=binary_cpu,
        cuda=binary_cuda,
        name=f"binary[{body.__name__}]",
        parallel_from=device.LARGE_INPUT_ELEMENTS,
    )


def binary_grads_kernel(body):
    """Both input gradients of a binary op in one pass over the output gradient ``g``
    (one kernel call and one read of ``g`` instead of two); ``body`` returns the pair."""

    @njit(parallel=True, cache=True)
    def binary_grads_cpu(ga, gb, g, x, y):
        for i in prange(ga.size):
            ga[i], gb[i] = body(g[i], x[i], y[i])

    @device.cuda_factory
    def binary_grads_cuda():

        @cuda.jit
        def binary_grads(ga, gb, g, x, y):
            for i in range(cuda.grid(1), ga.size, cuda.gridsize(1)):
                ga[i], gb[i] = body(g[i], x[i], y[i])

        return device.launcher(binary_grads)

    return Kernel(
        cpu=binary_grads_cpu,
        cuda=binary_grads_cuda,
        name=f"binary_grads[{body.__name__}]",
        parallel_from=device.LARGE_INPUT_ELEMENTS,
    )


def zero_one(dtype):
    """(0, 1) as scalars of ``dtype``, made once per dtype (a NumPy scalar costs ~0.5 us)."""
    pair = _ZERO_ONE.get(dtype)
    if pair is None:
        pair = _ZERO_ONE[dtype] = (dtype.type(0), dtype.type(1))
    return pair


_ZERO_ONE = {}
_ZERO_PAIRS = {}


def _scalars(dtype, a, b):
    """``a`` and ``b`` in ``dtype`` (None: zero), so float32 kernels stay float32."""
    if a is None and b is None:
        zeros = _ZERO_PAIRS.get(dtype)  # every binary op's case: one lookup, no call
        if zeros is None:
            zeros = _ZERO_PAIRS[dtype] = (dtype.type(0), dtype.type(0))
        return zeros
    to_dtype = dtype.type
    a = zero_one(dtype)[0] if a is None else a if type(a) is to_dtype else to_dtype(a)
    b = zero_one(dtype)[0] if b is None else b if type(b) is to_dtype else to_dtype(b)
    return a, b


# The CPU branches below are written for per-op overhead: on a (4, 4) tensor the numba call
# itself is ~1 us and each extra Python step (a helper call, a reshape) ~0.1-0.3 us, the
# same order as the work. So a small input calls the kernel's serial twin directly
# (Kernel.cpu_for), and ravel() makes the 1-D views (a view of a C-contiguous array,
# cheaper than reshape).
def apply_unary(kernel, x, a=None, b=None, out_dtype=None):
    """A new array ``kernel(x, a, b)`` with ``x``'s shape (and dtype unless given); ``a`` and
    ``b`` are converted to ``x``'s dtype (None: zero)."""
    a, b = _scalars(x.dtype, a, b)
    if isinstance(x, np.ndarray):
        out = np.empty(x.shape, out_dtype or x.dtype)
        if out.size:
            kernel.cpu_for(out.size)(out.ravel(), x.ravel(), a, b)
        return out
    out = device.empty(x.shape, out_dtype or x.dtype, device.CUDA)
    if out.size:
        kernel(device.flat(out), device.flat(x), a, b)
    return out


def apply_binary(kernel, x, y, a=None, b=None, out_dtype=None):
    """A new array ``kernel(x, y, a, b)``; ``x`` and ``y`` have one shape and dtype."""
    a, b = _scalars(x.dtype, a, b)
    if isinstance(x, np.ndarray):
        out = np.empty(x.shape, out_dtype or x.dtype)
        if out.size:
            kernel.cpu_for(out.size)(out.ravel(), x.ravel(), y.ravel(), a, b)
        return out
    out = device.empty(x.shape, out_dtype or x.dtype, device.CUDA)
    if out.size:
        kernel(device.flat(out), device.flat(x), device.flat(y), a, b)
    return out


def apply_binary_inplace(kernel, x, y, a=None, b=None):
    """``x[i] = kernel(x[i], y[i], a, b)`` in place (each element is read before it is
    written, so ``out`` may be ``x``); returns ``x``."""
    a, b = _scalars(x.dtype, a, b)
    if x.size:
        if isinstance(x, np.ndarray):
            flat_x = x.ravel()
            kernel.cpu_for(x.size)(flat_x, flat_x, y.ravel(), a, b)
        else:
            flat_x = device.flat(x)
            kernel(flat_x, flat_x, device.flat(y), a, b)
    return x


def apply_binary_grads(kernel, g, x, y):
    """Two new arrays ``(ga, gb) = kernel(g, x, y)`` of ``g``'s shape and dtype."""
    if isinstance(g, np.ndarray):
        ga, gb = np.empty(g.shape, g.dtype), np.empty(g.shape, g.dtype)
        if g.size:
            kernel.cpu_for(g.size)(ga.ravel(), gb.ravel(), g.ravel(), x.ravel(), y.ravel())
        return ga, gb
    ga = device.empty(g.shape, g.dtype, device.CUDA)
    gb = device.empty(g.shape, g.dtype, device.CUDA)
    if ga.size:
        kernel(device.flat(ga), device.flat(gb), device.flat(g), device.flat(x), device.flat(y))
    return ga, gb
