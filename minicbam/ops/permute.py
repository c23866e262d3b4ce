"""Permute dimensions: y = x.transpose(dims), materialised by a strided gather.

backward: gx = gy permuted by the inverse permutation (argsort of dims).
"""

import numpy as np

from minicbam.function import Function
from minicbam.kernels.strided import permute_array


class Permute(Function):
    def __init__(self, dims):
        self.dims = dims

    def forward(self, x):
        return permute_array(x, self.dims)

    def backward(self, gy):
        return (permute_array(gy, tuple(np.argsort(self.dims))),)


def permute(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if sorted(d % max(x.ndim, 1) for d in dims) != list(range(x.ndim)):
        raise ValueError(f"permute: dims {dims} are not a permutation of {x.ndim} dimensions")
    dims = tuple(d % x.ndim for d in dims)
    return x if dims == tuple(range(x.ndim)) else Permute(dims)(x)


def transpose(x, dim0, dim1):
    for d in (dim0, dim1):
        if not -x.ndim <= d < x.ndim:
            raise IndexError(f"transpose: dimension {d} out of range for {x.ndim} dimensions")
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, dims)
