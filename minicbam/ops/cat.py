"""Concatenation and stacking.

cat:   y = [x_0 | x_1 | ...] along ``dim``; each x_i is scattered into its slab of y
backward: gx_i = the slab of gy that x_i filled (a gather)
stack: cat of the inputs each unsqueezed at ``dim``
"""

from minicbam import device
from minicbam.function import Function
from minicbam.ops.reshape import unsqueeze
from minicbam.kernels.strided import contiguous_strides, gather, scatter_into


class Cat(Function):
    def __init__(self, dim):
        self.dim = dim

    def _slabs(self, out_shape, sizes):
        """(offset, strides) of each input's slab inside the output."""
        strides = contiguous_strides(out_shape)
        start = 0
        for size in sizes:
            yield start * strides[self.dim], strides
            start += size

    def forward(self, *xs):
        shape = list(xs[0].shape)
        shape[self.dim] = sum(x.shape[self.dim] for x in xs)
        self.shape, self.x_shapes = tuple(shape), [x.shape for x in xs]
        out = device.empty(self.shape, xs[0].dtype, device.device_of(xs[0]))
        sizes = [x.shape[self.dim] for x in xs]
        for x, (offset, strides) in zip(xs, self._slabs(self.shape, sizes)):
            scatter_into(out, x, strides, offset)
        return out

    def backward(self, gy):
        sizes = [s[self.dim] for s in self.x_shapes]
        slabs = self._slabs(self.shape, sizes)
        return tuple(
            gather(gy, shape, strides, offset) if need else None
            for shape, (offset, strides), need in zip(self.x_shapes, slabs, self.needs_input_grad)
        )


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    ref = tensors[0]
    if not -ref.ndim <= dim < ref.ndim:
        raise IndexError(f"cat: dimension {dim} out of range for {ref.ndim} dimensions")
    dim %= ref.ndim
    for t in tensors:
        same = t.ndim == ref.ndim and all(
            a == b for k, (a, b) in enumerate(zip(t.shape, ref.shape)) if k != dim
        )
        if not same:
            raise ValueError(
                f"cat: sizes must match except in dimension {dim}; got {ref.shape} and {t.shape}"
            )
        if t.dtype != ref.dtype:
            raise TypeError(f"cat: expected all tensors of dtype {ref.dtype}, got {t.dtype}")
    return Cat(dim)(*tensors)


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    for t in tensors:
        if t.shape != tensors[0].shape:
            raise ValueError(
                f"stack: expected tensors of one shape, got {tensors[0].shape} and {t.shape}"
            )
    return cat([unsqueeze(t, dim) for t in tensors], dim if dim >= 0 else dim + tensors[0].ndim + 1)
