"""Basic indexing (ints, slices with steps, None, Ellipsis): a strided view, gathered.

For x with strides s, an index picks start_k, step_k, length_k per sliced dimension (and
a fixed position for an int), giving

    y[j] = x.flat[offset + sum_k j_k * step_k * s_k],   offset = sum_k start_k * s_k

    backward: gx = zeros(x.shape) with gy scattered into the same view (injective, so
    the scatter is race-free).
"""

from minicbam import device
from minicbam.function import Function
from minicbam.kernels.strided import contiguous_strides, gather, scatter_into


class GetItem(Function):
    def __init__(self, shape, strides, offset):
        self.shape, self.strides, self.offset = shape, strides, offset

    def forward(self, x):
        self.x_shape = x.shape
        return gather(x, self.shape, self.strides, self.offset)

    def backward(self, gy):
        gx = device.zeros(self.x_shape, gy.dtype, device.device_of(gy))
        return (scatter_into(gx, gy, self.strides, self.offset),)


def _expand_ellipsis(index, ndim):
    index = index if isinstance(index, tuple) else (index,)
    n_ellipsis = sum(1 for i in index if i is Ellipsis)
    if n_ellipsis > 1:
        raise IndexError("getitem: an index can only have a single ellipsis ('...')")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > ndim:
        raise IndexError(f"getitem: too many indices ({used}) for a tensor of {ndim} dimensions")
    if n_ellipsis:
        k = index.index(Ellipsis)
        return index[:k] + (slice(None),) * (ndim - used) + index[k + 1 :]
    return index + (slice(None),) * (ndim - used)


def view_of(index, shape):
    """(shape, strides, offset) of ``x[index]`` for a contiguous x of ``shape``."""
    src_strides = contiguous_strides(shape)
    out_shape, out_strides, offset, dim = [], [], 0, 0
    for item in _expand_ellipsis(index, len(shape)):
        if item is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        size, stride = shape[dim], src_strides[dim]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            out_shape.append(len(range(start, stop, step)))
            out_strides.append(step * stride)
            offset += start * stride if out_shape[-1] else 0
        elif hasattr(item, "__index__"):
            i = item.__index__()
            if not -size <= i < size:
                raise IndexError(
                    f"getitem: index {i} is out of bounds for dimension {dim} with size {size}"
                )
            offset += (i % size) * stride
        else:
            raise IndexError(
                f"getitem: only integers, slices, None and ... are supported, got "
                f"{type(item).__name__}"
            )
        dim += 1
    return tuple(out_shape), tuple(out_strides), offset


def getitem(x, index):
    shape, strides, offset = view_of(index, x.shape)
    return GetItem(shape, strides, offset)(x)
