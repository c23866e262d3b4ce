"""Kernel builders for elementwise maps, the shared-body pattern in its simplest form.

A *body* is a scalar ``@register_jitable`` function. The same body is inlined into a CPU
loop (``prange``) and into a CUDA grid-stride loop, so both devices compute exactly the
same expression per element:

    unary_kernel(f):   out[i] = f(x[i], a, b)
    binary_kernel(f):  out[i] = f(x[i], y[i], a, b)

``a`` and ``b`` are scalar parameters (clamp bounds, an exponent, ...), converted to the
arrays' dtype by the caller so float32 stays float32 on the GPU. Arrays are 1-D views of
C-contiguous buffers of one shape.
"""

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

    return Kernel(cpu=unary_cpu, cuda=unary_cuda, name=f"unary[{body.__name__}]")


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

    return Kernel(cpu=binary_cpu, cuda=binary_cuda, name=f"binary[{body.__name__}]")


def apply_unary(kernel, x, a=0.0, b=0.0, out_dtype=None):
    """A new array ``kernel(x, a, b)`` with ``x``'s shape (and dtype unless given)."""
    out = device.empty(x.shape, out_dtype or x.dtype, device.device_of(x))
    if out.size:
        kernel(device.flat(out), device.flat(x), x.dtype.type(a), x.dtype.type(b))
    return out


def apply_binary(kernel, x, y, a=0.0, b=0.0, out_dtype=None):
    """A new array ``kernel(x, y, a, b)``; ``x`` and ``y`` have one shape and dtype."""
    out = device.empty(x.shape, out_dtype or x.dtype, device.device_of(x))
    if out.size:
        kernel(device.flat(out), device.flat(x), device.flat(y), x.dtype.type(a), x.dtype.type(b))
    return out
