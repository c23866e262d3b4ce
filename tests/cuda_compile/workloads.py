"""A CPU workload that calls every op's kernels, forward and backward, in one dtype."""

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn, optim
from minicbam.kernels.gemm import bias_grad
from minicbam.ops.add_relu import add_relu
from minicbam.ops.batch_norm_relu import batch_norm_relu


def _leaf(rng, shape, dtype):
    return mc.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)


def _core_ops(rng, dtype):
    a, b = _leaf(rng, (3, 4), dtype), _leaf(rng, (4,), dtype)
    y = (a + b) * (a - b) / (b * b + 1.0)
    y = y.exp().log1p() if hasattr(y, "log1p") else (y.exp() + 1.0).log()
    y = y.sqrt().abs().relu().sigmoid().tanh().clamp(-0.5, 0.5) ** 2.0
    y = -y + a.permute(1, 0).T[1:, ::2].sum() + a.amax(1, keepdim=True) + a.max(0)[0]
    y = y + a.var(1, keepdim=True) + mc.cat([a, a], 0)[:3] + mc.stack([a, a])[1]
    _ = (a > b, a == b, a.argmax(1), a.double().float(), a.mean())
    y.sum().backward()


def _network_ops(rng, dtype):
    x = _leaf(rng, (2, 4, 6, 6), dtype)
    w = _leaf(rng, (4, 4, 3, 3), dtype)
    rm, rv = mc.zeros(4, dtype=dtype), mc.ones(4, dtype=dtype)
    # 4 x 4 channels: im2col + GEMM; the 2 -> 1 channel conv below takes the direct path
    y = F.conv2d(x, w, _leaf(rng, (4,), dtype), stride=1, padding=1)
    y = F.batch_norm(y, rm, rv, _leaf(rng, (4,), dtype), _leaf(rng, (4,), dtype), training=True)
    # the ResNet blocks' fused ops, and a 1x1 stride-2 conv (im2col on the CPU; CUDA's
    # pointwise path launches the gather, GEMM and scatter kernels reached here anyway)
    wb = (_leaf(rng, (4,), dtype), _leaf(rng, (4,), dtype))
    y = add_relu(batch_norm_relu(y, rm, rv, *wb, training=True), y)
    y = y + F.conv2d(x, _leaf(rng, (4, 4, 1, 1), dtype), stride=2).sum()
    s = F.channel_pool(y)
    y = F.gate(y, F.conv2d(s, _leaf(rng, (1, 2, 3, 3), dtype), padding=1))
    pooled = F.global_pool(y)
    y = F.squeeze_excite(
        y,
        _leaf(rng, (2, 4), dtype),
        _leaf(rng, (2,), dtype),
        _leaf(rng, (4, 2), dtype),
        _leaf(rng, (4,), dtype),
    )
    y = F.gate(y, pooled.sum(0).reshape(2, 4, 1, 1))
    y = F.max_pool2d(y, 2) + F.avg_pool2d(y, 2) + F.adaptive_max_pool2d(y, 3)
    y = F.adaptive_avg_pool2d(y, 1).flatten(1)
    y = F.dropout(F.linear(y, _leaf(rng, (3, 4), dtype), _leaf(rng, (3,), dtype)), 0.5)
    logits = y @ _leaf(rng, (3, 5), dtype)
    loss = F.cross_entropy(logits, mc.tensor(np.array([1, 4])), label_smoothing=0.1)
    loss = loss + F.log_softmax(logits, 1).mean() + F.softmax(logits, 0).sum()
    loss = loss + F.mse_loss(logits, logits.detach() * 0.5)
    loss.backward()
    with mc.no_grad():
        F.batch_norm(x, rm, rv, training=False)
        batch_norm_relu(x, rm, rv, training=False)
        nn.BatchNorm2d(4, dtype=dtype)(x)  # num_batches_tracked += 1: an int64 kernel
    optim.Adam([x, w], lr=1e-3, weight_decay=0.1, amsgrad=True).step()
    optim.AdamW([x, w], lr=1e-3).step()


def _long_reductions(rng, dtype):
    """Reductions long enough that a GPU plan splits them over blocks (two stages): a sum,
    a maximum and a mean loss to one value, few columns of many rows, a bias gradient of
    8 samples over large planes."""
    x = _leaf(rng, (3, 20000), dtype)
    loss = x.sum() + x.amax() + mc.ops.l1_loss(x, x.detach() * 0.5) + x.sum(0).sum()
    _ = (x.argmax(), mc.tensor(np.arange(60000).reshape(20000, 3)).sum(0))
    loss.backward()
    # the CPU convolution computes its bias gradient per chunk of samples: call it directly
    bias_grad(rng.standard_normal(8 * 4 * 1024).astype(dtype), 4, 1024)


def run_all_ops(dtype):
    rng = np.random.default_rng(0)
    _core_ops(rng, dtype)
    _network_ops(rng, dtype)
    _long_reductions(rng, dtype)
