"""1x1 convolutions (one group, no padding) as one batch-wide GEMM, without im2col.

x (N, C, H, W), w (CO, C, 1, 1), stride (sh, sw): OH = (H - 1) // sh + 1, L = OH OW. With
xs the strided samples of x in the "joined" layout (C, N L), sample n's columns at
[n L, (n + 1) L):

    xs[c, n L + oh OW + ow] = x[n, c, oh sh, ow sw]
    y_j  = W xs                 (CO, N L)   -> y (N, CO, OH, OW)
    gW   = gy_j xs^T            (CO, C)     (the sum over the batch is inside the GEMM)
    gxs  = W^T gy_j             (C, N L)    -> gx: scattered onto the strided positions of
                                               zeros (stride 1: gx is gxs, re-laid out)

gy_j is gy re-laid out as (CO, N L). Every layout change is one strided gather or scatter
(kernels/strided.py); each product is one GEMM whose N L columns are wide even where L is
small (a ResNet's last stage: L = 16), which the per-sample products of im2col + GEMM are
not. Both devices: gather, scatter and gemm have CPU and CUDA kernels.
"""

from minicbam import device
from minicbam.kernels.gemm import device_fill_zero, gemm
from minicbam.kernels.strided import gather, scatter_into


def eligible(w_shape, pads, groups):
    """Whether conv2d with this weight, padding and groups is a pointwise conv."""
    return groups == 1 and tuple(w_shape[2:]) == (1, 1) and not any(pads)


def _out_hw(x_shape, stride):
    H, W = x_shape[2:]
    return (H - 1) // stride[0] + 1, (W - 1) // stride[1] + 1


def _joined_x(x, stride):
    """xs (C, N L): x's strided samples in the joined layout (one gather)."""
    N, C, H, W = x.shape
    OH, OW = _out_hw(x.shape, stride)
    shape, strides = (C, N, OH, OW), (H * W, C * H * W, stride[0] * W, stride[1])
    return gather(x, shape, strides).reshape((C, N * OH * OW))


def _joined_view(N, CO, L):
    """(shape, strides) of an (N, CO, L) array seen as (CO, N, L), for gather/scatter."""
    return (CO, N, L), (L, CO * L, 1)


def forward(x, w, stride):
    """y (N, CO, OH, OW) of the 1x1 conv (no bias)."""
    N, CO = x.shape[0], w.shape[0]
    OH, OW = _out_hw(x.shape, stride)
    L = OH * OW
    dev = device.device_of(x)
    w2 = w.reshape((CO, w.shape[1]))
    yj = gemm(device.empty((CO, N * L), x.dtype, dev), w2, _joined_x(x, stride))
    y = device.empty((N, CO, OH, OW), x.dtype, dev)
    shape, strides = _joined_view(N, CO, L)
    scatter_into(y, yj.reshape(shape), strides)
    return y


def backward(x, w, gy, stride, need_x, need_w):
    """(gx or None, gw or None) of the 1x1 conv."""
    N, C, H, W = x.shape
    CO, L = w.shape[0], gy.shape[2] * gy.shape[3]
    dev = device.device_of(gy)
    shape, strides = _joined_view(N, CO, L)
    gyj = gather(gy, shape, strides).reshape((CO, N * L))
    gx = gw = None
    if need_w:
        gw = gemm(device.empty((CO, C), w.dtype, dev), gyj, _joined_x(x, stride), tb=True)
        gw = gw.reshape(w.shape)
    if need_x:
        gxs = gemm(device.empty((C, N * L), x.dtype, dev), w.reshape((CO, C)), gyj, ta=True)
        gx = device.empty(x.shape, x.dtype, dev)
        if tuple(stride) != (1, 1):
            device_fill_zero(gx)
        OH, OW = gy.shape[2:]
        gx_strides = (H * W, C * H * W, stride[0] * W, stride[1])
        scatter_into(gx, gxs.reshape((C, N, OH, OW)), gx_strides)
    return gx, gw
