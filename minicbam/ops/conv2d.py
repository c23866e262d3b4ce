"""2-D convolution (PyTorch's conv2d, a cross-correlation) as im2col + GEMM.

x (N, C, H, W), w (CO, C/G, KH, KW), optional b (CO,), G groups. With padding (pt, pb, pl, pr),
stride (sh, sw) and dilation (dh, dw):

    OH = (H + pt + pb - dh*(KH - 1) - 1) // sh + 1          (OW likewise), L = OH*OW
    y[n, co, oh, ow] = b[co] + sum_{c in group(co), kh, kw}
                       w[co, c - g*C/G, kh, kw] * x[n, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]

As matrices, per sample n and group g, with col_n = im2col(x_n) (C*KH*KW, L) whose rows of
group g form col_ng (C/G*KH*KW, L) and W_g = w[g*CO/G:(g+1)*CO/G] as (CO/G, C/G*KH*KW):

    y_ng     = W_g col_ng (+ b_g)
    gW_g     = sum_n gy_ng col_ng^T
    gcol_ng  = W_g^T gy_ng,          gx_n = col2im(gcol_n)   (im2col's adjoint, a gather)
    gb[co]   = sum_{n, oh, ow} gy[n, co, oh, ow]

Tiny convolutions (CBAM's 2 -> 1 channel 7x7 spatial conv) skip im2col: per output position
and group both paths do Cg*COg*KH*KW multiply-adds, but im2col also writes Cg*KH*KW col
values, as much work as the products when COg is small (im2col was ~6 ms of a 17 ms CBAM
forward). So when Cg * COg <= DIRECT_MAX_PRODUCT (channels per group, input times output; the
kernel size cancels out) conv2d_direct.py computes y, gx and gw directly, on both devices.

On the CPU, float32 3x3 convolutions with stride 1, dilation 1, one group, padding <= 2
and at least WINOGRAD_MIN_CHANNELS input and output channels use Winograd F(4x4, 3x3)
(kernels/winograd.py) for y, gx and gW: 4x fewer multiplies than im2col + GEMM, batched over
the whole batch. float64 stays on im2col + GEMM (an exact sum, for gradcheck) unless
WINOGRAD = "always" (the tests' hook, to gradcheck the Winograd path in float64).

On the CPU, convolutions with a kernel larger than 1x1 and at most BATCHED_MAX_DEPTH
values per group in each product (Cg*KH*KW: a first layer on 1-channel images) take the
"batched" path: one whole-batch col, kept for the backward, and per-(sample, group)
products straight into y, as on CUDA; gW sums the per-sample products over n.

1x1 convolutions with one group and no padding (ResNet's downsample shortcuts, 1x1 stride
2; the bottleneck's 1x1 convs) can skip im2col: kernels/pointwise.py gathers x's strided
samples once into a (C, N*L) matrix and runs y, gx and gW as one batch-wide GEMM each (both
devices). POINTWISE = "auto" takes it on CUDA, whose im2col path multiplies per sample (a
last-stage L = 16 fills a quarter of a 64-wide output tile). The CPU keeps im2col + GEMM:
its chunks are already joined into wide GEMMs, and at ResNet-18's three downsample shapes
(batch 64) the pointwise path measured the same to ~5% more CPU time per fwd + bwd (its
backward zero-fills gx and then scatters into it, where col2im writes gx once).
"always" (the tests' hook) takes it on both devices, "never" nowhere.

The GEMMs run over (sample, group) batches (gemm.py), a chunk of samples at a time. On the
CPU each chunk is one task on gemm.py's task pool with its col in a thread-local scratch
buffer (see "CPU" below); on CUDA the chunks run in turn through one col buffer of up to
128 MiB.
"""

import threading

import numpy as np

from minicbam import device
from minicbam.function import Function, check_same_device
from minicbam.kernels import pointwise, winograd
from minicbam.kernels.conv2d_direct import (
    conv_direct,
    conv_direct_input_grad,
    conv_direct_weight_grad,
)
from minicbam.kernels.gemm import add_bias, add_into, bias_grad, gemm
from minicbam.kernels.im2col import col2im, im2col
from minicbam.kernels.strided import gather, scatter_into
from minicbam.kernels.task_pool import cpu_workers, run_tasks
from minicbam.ops.reduce import sum_array

# Direct path when (C/G) * (CO/G) <= this (see the docstring); 0 forces im2col + GEMM.
DIRECT_MAX_PRODUCT = 8
# "auto": Winograd for eligible float32 CPU convs; "always": every eligible CPU conv of any
# float dtype (tests); "never": off. Below WINOGRAD_MIN_CHANNELS the GEMMs are too thin to pay.
WINOGRAD = "auto"
WINOGRAD_MIN_CHANNELS = 16
POINTWISE = "auto"  # 1x1 convs as batch-wide GEMMs: "auto" (CUDA), "always" or "never"
MIN_POOLED_FLOPS = 1 << 27  # smaller convs (the digits CNN's) run on the calling thread
# CPU convs with a kernel larger than 1x1 whose products reduce over at most this many
# values per group (Cg*KH*KW: a first layer's 1*3*3) take the "batched" path: im2col of the whole batch into its own
# (N, C*KH*KW, L) array, kept for the backward, and one product per (sample, group)
# straight into y, as on CUDA. Such products are too thin for the joined col to pay, and
# the joined layout's strided scatter of y and gather of gy cost more than the products.
BATCHED_MAX_DEPTH = 16

# Elements of col per chunk of samples. CPU: a few MiB per task, reused, so it stays cheap
# to touch (docs/design.md, "Measured facts"). CUDA: 128 MiB in float32.
CPU_COL_BUDGET = 1 << 20
CUDA_COL_BUDGET = 1 << 25


# CPU scratch: col buffers are used only inside one forward or backward call, so each
# thread keeps one per dtype and reuses it. A fresh multi-MiB buffer costs its first touch
# in page faults (docs/design.md, "Measured facts"), which measured as much as the im2col that fills it.
_scratch_buffers = threading.local()


def _scratch(name, shape, dtype):
    """A reused C-contiguous CPU array of this shape (contents undefined)."""
    size = int(np.prod(shape))
    cache = _scratch_buffers.__dict__.setdefault("cache", {})
    key = (name, np.dtype(dtype))
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


class Conv2d(Function):
    def __init__(self, stride, pads, dilation, groups):
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups

    def _setup(self, x, w):
        (N, C, H, W), (CO, Cg, KH, KW) = x.shape, w.shape
        (sh, sw), (pt, pb, pl, pr), (dh, dw) = self.stride, self.pads, self.dilation
        OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
        OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
        self.geom = (KH, KW, sh, sw, pt, pl, dh, dw, OH, OW)
        G = self.groups
        self.L = OH * OW
        # batched GEMM views: w as (G, CO/G, Cg*KH*KW), y/gy as (N, G, CO/G, L)
        self.w3_shape = (G, CO // G, Cg * KH * KW)
        self.y4_shape = (N, G, CO // G, self.L)
        self.col4_shape = (G, Cg * KH * KW, self.L)
        # samples per chunk on CUDA (the CPU sizes its tasks in _cpu_chunks)
        self.chunk = max(1, min(N, CUDA_COL_BUDGET // max(C * KH * KW * self.L, 1)))
        return (N, CO, OH, OW)

    def _col_buffer(self, x):
        """The CUDA path's col buffer, (chunk, C*KH*KW, L)."""
        C, KK = x.shape[1], self.geom[0] * self.geom[1]
        shape = (self.chunk, C * KK, self.L)
        return device.empty(shape, x.dtype, device.device_of(x))

    def _chunks(self, N):
        for n0 in range(0, N, self.chunk):
            yield n0, min(self.chunk, N - n0)

    def _algorithm(self, x, w):
        """ "direct", "pointwise", "batched", "winograd" or "im2col" (see the module docstring)."""
        if w.shape[1] * (w.shape[0] // self.groups) <= DIRECT_MAX_PRODUCT:
            return "direct"
        if pointwise.eligible(w.shape, self.pads, self.groups) and (
            POINTWISE == "always" or (POINTWISE == "auto" and device.device_of(x) != device.CPU)
        ):
            return "pointwise"
        if device.device_of(x) != device.CPU:
            return "im2col"
        if (
            w.shape[2] * w.shape[3] > 1
            and w.shape[1] * w.shape[2] * w.shape[3] <= BATCHED_MAX_DEPTH
        ):
            return "batched"  # (1x1 kernels: no im2col to share, left to the GEMM paths)
        if WINOGRAD == "never":
            return "im2col"
        if not winograd.eligible(w.shape, self.stride, self.pads, self.dilation, self.groups):
            return "im2col"
        if WINOGRAD == "always":
            return "winograd"
        wide = min(w.shape[0], w.shape[1]) >= WINOGRAD_MIN_CHANNELS
        return "winograd" if wide and x.dtype == np.float32 else "im2col"

    def forward(self, x, w, b=None):
        shape = self._setup(x, w)
        self.algorithm = self._algorithm(x, w)
        self.direct = self.algorithm == "direct"
        if self.algorithm == "winograd":
            y = winograd.conv3x3(x, w, self.pads)
        elif self.algorithm == "pointwise":
            y = pointwise.forward(x, w, self.stride)
        else:
            y = device.empty(shape, x.dtype, device.device_of(x))
            self._forward_gemm_or_direct(x, w, y)
        if b is not None:
            add_bias(y.reshape((y.shape[0], y.shape[1], self.L)), b, y.shape[1], self.L)
        self.x, self.w, self.has_bias = x, w, b is not None
        return y

    def _forward_gemm_or_direct(self, x, w, y):
        y4, w3 = y.reshape(self.y4_shape), w.reshape(self.w3_shape)
        if self.direct:
            conv_direct(y, x, w, self.geom, self.groups)
        elif self.algorithm == "batched":
            self._forward_batched(x, w3, y4)
        elif device.device_of(x) == device.CPU:
            self._forward_cpu(x, w3, y)
        else:
            col = self._col_buffer(x)
            for n0, nb in self._chunks(x.shape[0]):
                im2col(col[:nb], x[n0 : n0 + nb], self.geom)
                gemm(y4[n0 : n0 + nb], w3, col[:nb].reshape((nb,) + self.col4_shape))

    def backward(self, gy):
        if self.direct:
            return self._backward_direct(gy)
        if self.algorithm == "winograd":
            return self._backward_winograd(gy)
        if self.algorithm == "batched":
            return self._backward_batched(gy)
        if self.algorithm == "pointwise":
            need_x, need_w = self.needs_input_grad[:2]
            grads = pointwise.backward(self.x, self.w, gy, self.stride, need_x, need_w)
            return self._with_bias_grad(gy, grads)
        if device.device_of(gy) == device.CPU:
            return self._backward_cpu(gy)
        need_x, need_w = self.needs_input_grad[:2]
        x, w = self.x, self.w
        dev = device.device_of(gy)
        gy4, w3 = gy.reshape(self.y4_shape), w.reshape(self.w3_shape)
        gx = device.empty(x.shape, x.dtype, dev) if need_x else None
        gw = device.zeros(self.w3_shape, w.dtype, dev) if need_w else None
        gw_part = device.empty((self.chunk,) + self.w3_shape, w.dtype, dev) if need_w else None
        col = self._col_buffer(x) if need_w else None
        gcol = self._col_buffer(x) if need_x else None
        for n0, nb in self._chunks(x.shape[0]):
            if need_w:
                im2col(col[:nb], x[n0 : n0 + nb], self.geom)
                cols = col[:nb].reshape((nb,) + self.col4_shape)
                gemm(gw_part[:nb], gy4[n0 : n0 + nb], cols, tb=True)
                add_into(gw, gw_part[0] if nb == 1 else sum_array(gw_part[:nb], (0,)))
            if need_x:
                gemm(gcol[:nb].reshape((nb,) + self.col4_shape), w3, gy4[n0 : n0 + nb], ta=True)
                col2im(gx[n0 : n0 + nb], gcol[:nb], self.geom)
        return self._with_bias_grad(gy, (gx, None if gw is None else gw.reshape(w.shape)))

    def _with_bias_grad(self, gy, grads):
        if self.has_bias:
            CO = gy.shape[1]
            gb = bias_grad(gy.reshape((gy.shape[0], CO, self.L)), CO, self.L)
            grads += (gb if self.needs_input_grad[2] else None,)
        return grads

    def _backward_winograd(self, gy):
        gx = gw = None
        if self.needs_input_grad[0]:
            gx = winograd.input_grad(gy, self.w, self.pads)
        if self.needs_input_grad[1]:
            gw = winograd.weight_grad(self.x, gy, self.pads)
        return self._with_bias_grad(gy, (gx, gw))

    def _backward_direct(self, gy):
        x, w, dev = self.x, self.w, device.device_of(gy)
        gx = gw = None
        if self.needs_input_grad[0]:
            gx = conv_direct_input_grad(
                device.empty(x.shape, x.dtype, dev), gy, w, self.geom, self.groups
            )
        if self.needs_input_grad[1]:
            gw = conv_direct_weight_grad(gy, x, w.shape, self.geom, self.groups)
        return self._with_bias_grad(gy, (gx, gw))

    # ------------------------------------------------------------------------- batched (CPU)
    def _forward_batched(self, x, w3, y4):
        """y4 (N, G, CO/G, L) = w3 (G, CO/G, K) @ col (N, G, K, L), col kept for gW."""
        N = x.shape[0]
        col = device.empty((N, x.shape[1] * self.geom[0] * self.geom[1], self.L), x.dtype, "cpu")
        im2col(col, x, self.geom)
        gemm(y4, w3, col.reshape((N,) + self.col4_shape))
        self.col = col if self.needs_input_grad[1] else None

    def _backward_batched(self, gy):
        """gW = sum_n gy_n col_n^T (per-sample products, then a sum over n); gx = col2im of
        gcol_n = W^T gy_n."""
        x, w, N = self.x, self.w, self.x.shape[0]
        gy4 = gy.reshape(self.y4_shape)
        gx = gw = None
        if self.needs_input_grad[1]:
            parts = device.empty((N,) + self.w3_shape, w.dtype, "cpu")
            gemm(parts, gy4, self.col.reshape((N,) + self.col4_shape), tb=True)
            gw = sum_array(parts, (0,)).reshape(w.shape)
            self.col = None
        if self.needs_input_grad[0]:
            gx = device.empty(x.shape, x.dtype, "cpu")
            gcol = device.empty((N,) + self.col4_shape, x.dtype, "cpu")
            gemm(gcol, w.reshape(self.w3_shape), gy4, ta=True)
            col2im(gx, gcol.reshape((N, -1, self.L)), self.geom)
        return self._with_bias_grad(gy, (gx, gw))

    # ------------------------------------------------------------------------- CPU
    # The CPU splits the batch into chunks, one task each on the CPU pool (kernels/task_pool.py):
    # a task fills its own col (thread-local scratch) and runs its products on its thread,
    # so one task's memory-bound im2col overlaps another's GEMM, and col is consumed while
    # still in cache. A chunk's col is one (C*KH*KW, nb*L) matrix ("joined": sample n's
    # columns at [n*L, (n+1)*L)), filled through a (nb, C*KH*KW, L) strided view, so each
    # product of a chunk is one GEMM with nb*L columns: deep layers (L = 16 at 4x4) get
    # products BLAS runs efficiently. gy and y move between (nb, CO, L) and the joined
    # (CO, nb*L) by a strided gather/scatter (no copy when nb = 1).
    def _pooled(self):
        """Whether this conv is big enough for the task pool: handing tasks to threads
        costs ~1 ms, more than all of a small conv (CBAM's 2 -> 1 channel spatial conv)."""
        _, G, COg, L = self.y4_shape
        return 2 * G * COg * self.w3_shape[2] * L * self.y4_shape[0] >= MIN_POOLED_FLOPS

    def _run_chunks(self, fn, arg_lists):
        if self._pooled():
            return run_tasks(fn, arg_lists)
        return [fn(*args) for args in arg_lists]  # numba's own threads parallelise im2col

    def _cpu_chunks(self, N, per_sample):
        tasks = -(-N // max(1, CPU_COL_BUDGET // max(per_sample, 1)))
        workers = cpu_workers() if self._pooled() else 1
        tasks = min(N, max(tasks, workers) if tasks < workers else -(-tasks // workers) * workers)
        chunk = -(-N // tasks)
        return [(n0, min(chunk, N - n0)) for n0 in range(0, N, chunk)]

    def _joined_col(self, x, nb):
        """col as a (nb, C*KH*KW, L) view for im2col/col2im and as (G, Cg*KH*KW, nb*L)."""
        G, K, L = self.col4_shape
        buf = _scratch("col", (G * K, nb * L), x.dtype)
        return buf.reshape(G * K, nb, L).transpose(1, 0, 2), buf.reshape(G, K, nb * L)

    def _y_view(self, nb, n0):
        """(shape, strides, offset) of y[n0:n0+nb] as (G, CO/G, nb, L), for gather/scatter."""
        _, G, COg, L = self.y4_shape
        return (G, COg, nb, L), (COg * L, L, G * COg * L, 1), n0 * G * COg * L

    def _forward_cpu(self, x, w3, y):
        per_sample = x.shape[1] * self.geom[0] * self.geom[1] * self.L
        self._run_chunks(
            self._forward_chunk,
            [(x, w3, y, n0, nb) for n0, nb in self._cpu_chunks(x.shape[0], per_sample)],
        )

    def _forward_chunk(self, x, w3, y, n0, nb):
        col, colj = self._joined_col(x, nb)
        im2col(col, x[n0 : n0 + nb], self.geom)
        G, COg = self.y4_shape[1:3]
        if nb == 1:  # the joined layout is y's own
            gemm(y.reshape(self.y4_shape)[n0], w3, colj)
            return
        shape, strides, offset = self._y_view(nb, n0)
        yj = _scratch("y", shape, x.dtype)
        gemm(yj.reshape((G, COg, nb * self.L)), w3, colj)
        scatter_into(y, yj, strides, offset)

    def _backward_cpu(self, gy):
        need_x, need_w = self.needs_input_grad[:2]
        x, w = self.x, self.w
        gx = device.empty(x.shape, x.dtype, device.CPU) if need_x else None
        per_sample = x.shape[1] * self.geom[0] * self.geom[1] * self.L
        chunks = self._cpu_chunks(x.shape[0], per_sample)
        parts = self._run_chunks(self._backward_chunk, [(gy, gx, n0, nb) for n0, nb in chunks])
        gw = None
        if need_w:
            gw = parts[0]
            for part in parts[1:]:
                add_into(gw, part)
            gw = gw.reshape(w.shape)
        return self._with_bias_grad(gy, (gx, gw))

    def _backward_chunk(self, gy, gx, n0, nb):
        """gx[n0:n0+nb] (when asked) and this chunk's part of gW (returned, or None)."""
        x, w3 = self.x, self.w.reshape(self.w3_shape)
        G, COg, L = self.y4_shape[1], self.y4_shape[2], self.L
        if nb == 1:
            gyj = gy.reshape(self.y4_shape)[n0]
        else:
            shape, strides, offset = self._y_view(nb, n0)
            gyj = gather(gy, shape, strides, offset).reshape((G, COg, nb * L))
        col, colj = self._joined_col(x, nb)
        gw = None
        if self.needs_input_grad[1]:
            im2col(col, x[n0 : n0 + nb], self.geom)
            gw = gemm(device.empty(self.w3_shape, x.dtype, device.CPU), gyj, colj, tb=True)
        if gx is not None:
            gemm(colj, w3, gyj, ta=True)  # col now holds gcol
            col2im(gx[n0 : n0 + nb], col, self.geom)
        return gw


# ----------------------------------------------------------------------------- arguments
def _pair(name, value):
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _pads(padding, stride, dilation, kernel):
    """(top, bottom, left, right) from an int, a pair, 'valid' or 'same' (as PyTorch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise ValueError(
                f"conv2d: padding must be 'valid', 'same', an int or a pair, got {padding!r}"
            )
        if stride != (1, 1):
            raise ValueError(
                f"conv2d: padding='same' is not supported for strided "
                f"convolutions, got stride={stride}"
            )
        # total padding d*(k-1); an odd total puts the extra row/column at the bottom/right
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = _pair("padding", padding)
    if ph < 0 or pw < 0:
        raise ValueError(f"conv2d: padding must be non-negative, got {(ph, pw)}")
    return ph, ph, pw, pw


def _check_shapes(x, w, b, groups):
    if x.ndim != 4:
        raise ValueError(
            f"conv2d: expected input of 4 dimensions (N, C, H, W), got shape {x.shape}"
        )
    if w.ndim != 4:
        raise ValueError(
            f"conv2d: expected weight of 4 dimensions (C_out, C_in/groups, KH, KW), "
            f"got shape {w.shape}"
        )
    if not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    C, CO = x.shape[1], w.shape[0]
    if C % groups or CO % groups:
        raise ValueError(
            f"conv2d: groups={groups} must divide both input channels ({C}) and output "
            f"channels ({CO}); input shape {x.shape}, weight shape {w.shape}"
        )
    if w.shape[1] * groups != C:
        raise ValueError(
            f"conv2d: input of shape {x.shape} has {C} channels, but weight of shape {w.shape} "
            f"with groups={groups} expects {w.shape[1] * groups}"
        )
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        got = f"input {x.dtype}, weight {w.dtype}" + ("" if b is None else f", bias {b.dtype}")
        raise TypeError(f"conv2d: expected input, weight and bias of one dtype, got {got}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"conv2d: expected a floating-point input, got dtype {x.dtype}")
    if b is not None and b.shape != (CO,):
        raise ValueError(f"conv2d: expected bias of shape ({CO},), got shape {b.shape}")


def _check_geometry(x, w, stride, pads, dilation):
    if min(stride) <= 0:
        raise ValueError(f"conv2d: stride must be positive, got {stride}")
    if min(dilation) <= 0:
        raise ValueError(f"conv2d: dilation must be positive, got {dilation}")
    padded = (x.shape[2] + pads[0] + pads[1], x.shape[3] + pads[2] + pads[3])
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, w.shape[2:]))
    if extent[0] > padded[0] or extent[1] > padded[1]:
        raise ValueError(
            f"conv2d: kernel size {tuple(w.shape[2:])} (dilated extent {extent}) is larger than "
            f"the padded input {padded} (input shape {x.shape})"
        )


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's ``conv2d``: input (N, C, H, W), weight (C_out, C/groups, KH, KW)."""
    x, w, b = input, weight, bias
    check_same_device("conv2d", [t for t in (x, w, b) if t is not None])
    _check_shapes(x, w, b, groups)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    pads = _pads(padding, stride, dilation, w.shape[2:])
    _check_geometry(x, w, stride, pads, dilation)
    fn = Conv2d(stride, pads, dilation, int(groups))
    return fn(x, w) if b is None else fn(x, w, b)
