"""A catalogue of bad inputs: each must fail with a clear error, never a crash or a hang.

Every row is (id, a call that triggers the mistake, the exception type, regexes). The
regexes check that the message names the op (or layer/function) and says what was
expected and what was given. Where PyTorch has the same error, ``torch_fn`` runs the
equivalent PyTorch call and ``torch_exc`` records the type PyTorch raises; where the
types differ (minicbam raises TypeError/ValueError/IndexError for argument problems
where PyTorch raises RuntimeError), the difference is visible in the row itself.

Kept tiny: every call fails during argument checking, before a kernel compiles, except
the anomaly rows (a 3-element log/sqrt) and the loaded-model rows.
"""

import re
from dataclasses import dataclass

import numpy as np
import pytest

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import models, nn, optim
from minicbam.app.config import UserError
from minicbam.data import DataLoader, TensorDataset
from minicbam.app.factories import make_model
from minicbam.io.serialization import save


@dataclass
class Case:
    id: str
    fn: object
    exc: type
    patterns: tuple
    torch_fn: object = None
    torch_exc: type = None


CASES = []


def case(id, fn, exc, *patterns, torch=None, torch_exc=None):
    CASES.append(Case(id, fn, exc, patterns, torch, torch_exc))


def r(*shape, dtype=None, device="cpu", requires_grad=False):
    return mc.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)


def labels(*values):
    return mc.tensor(np.array(values, dtype=np.int64))


def run_training(module, x):
    module.train()
    return module(x)


def backward_twice():
    x = r(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()


def shrink_data_then_backward():
    x = r(3, requires_grad=True)
    y = (x * 2.0).sum()
    x.data = np.zeros(4, dtype=np.float32)  # the leaf changed shape after the graph was built
    y.backward()


def anomaly_forward():
    x = mc.tensor([1.0, -1.0, 2.0], requires_grad=True)
    with mc.detect_anomaly():
        x.log()


def anomaly_backward():
    x = mc.tensor([0.0, 1.0, 4.0], requires_grad=True)
    with mc.detect_anomaly():
        y = x.sqrt().sum()  # finite forward; d sqrt(x)/dx = inf at 0
        y.backward()


def non_leaf_requires_grad_false():
    x = r(3, requires_grad=True)
    (x * 2.0).requires_grad_(False)


def load_wrong_keys():
    m = nn.Linear(3, 2)
    state = m.state_dict()
    state["weight_typo"] = state.pop("weight")
    m.load_state_dict(state)


def load_wrong_shapes():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)).state_dict()
    m.load_state_dict(state)


def load_resnet_from_other_checkpoint(tmp_dir):
    src = models.DigitsCNN(attention="se", width=4)
    path = tmp_dir / "digits_se.npz"
    save(src.state_dict(), path)
    models.DigitsCNN(attention="cbam", width=4).load_state_dict(mc.load(path))


def optimizer_step_with_empty_group():
    optim.SGD([], lr=0.1)


def step_then_backward(make_optimizer):
    w = r(3, requires_grad=True)
    y = (w * w).sum()
    w.grad = mc.ones(3)
    make_optimizer([w]).step()
    y.backward()


def inplace_then_backward():
    w = r(3, requires_grad=True)
    y = w.sigmoid().sum()
    with mc.no_grad():
        w.clamp_(-0.5, 0.5)
    y.backward()


def torch_step_then_backward(t):
    w = t.randn(3, requires_grad=True)
    y = (w * w).sum()
    w.grad = t.ones(3)
    t.optim.Adam([w]).step()
    y.backward()


def loader(batch_size):
    dataset = TensorDataset(mc.zeros(4, 2), mc.zeros(4, dtype=mc.int64))
    return DataLoader(dataset, batch_size=batch_size)


# The table: one case() per row, kept one row per few lines for reading.
# fmt: off
# ------------------------------------------------------------------ ranks
case("conv2d_rank2_input", lambda: F.conv2d(r(8, 8), r(4, 3, 3, 3)), ValueError,
     r"conv2d", r"4 dimensions", r"\(8, 8\)",
     torch=lambda t: t.nn.functional.conv2d(t.randn(8, 8), t.randn(4, 3, 3, 3)),
     torch_exc=RuntimeError)
case("conv2d_rank5_input", lambda: nn.Conv2d(3, 4, 3)(r(1, 1, 3, 8, 8)), ValueError,
     r"conv2d", r"4 dimensions", r"\(1, 1, 3, 8, 8\)",
     torch=lambda t: t.nn.Conv2d(3, 4, 3)(t.randn(1, 1, 3, 8, 8)), torch_exc=RuntimeError)
case("batchnorm2d_rank3_input", lambda: nn.BatchNorm2d(3)(r(2, 3, 4)), ValueError,
     r"BatchNorm2d", r"expected 4D input", r"got 3D",
     torch=lambda t: t.nn.BatchNorm2d(3)(t.randn(2, 3, 4)), torch_exc=ValueError)
case("batch_norm_rank1_input", lambda: F.batch_norm(r(4), mc.zeros(4), mc.ones(4)), ValueError,
     r"batch_norm", r"2 or more dimensions", r"\(4,\)")
case("max_pool2d_rank2_input", lambda: F.max_pool2d(r(8, 8), 2), ValueError,
     r"max_pool2d", r"4-D input", r"\(8, 8\)",
     torch=lambda t: t.nn.functional.max_pool2d(t.randn(8), 2), torch_exc=RuntimeError)
case("avg_pool2d_rank5_input", lambda: nn.AvgPool2d(2)(r(1, 1, 1, 4, 4)), ValueError,
     r"avg_pool2d", r"4-D input", r"\(1, 1, 1, 4, 4\)",
     torch=lambda t: t.nn.AvgPool2d(2)(t.randn(1, 1, 1, 4, 4)), torch_exc=RuntimeError)
case("adaptive_avg_pool2d_rank2_input", lambda: F.adaptive_avg_pool2d(r(4, 4), 1), ValueError,
     r"adaptive_avg_pool2d", r"4-D input", r"\(4, 4\)")
case("linear_0d_input", lambda: nn.Linear(3, 2)(mc.tensor(1.0)), ValueError,
     r"linear", r"\(\)",
     torch=lambda t: t.nn.Linear(3, 2)(t.tensor(1.0)), torch_exc=RuntimeError)
case("cbam_rank3_input", lambda: nn.CBAM(8, reduction=2)(r(8, 4, 4)), ValueError,
     r"ChannelAttention\(8\)", r"4-D input", r"\(8, 4, 4\)")
case("spatial_attention_rank2_input", lambda: nn.SpatialAttention(3)(r(4, 4)), ValueError,
     r"SpatialAttention", r"4-D input", r"\(4, 4\)")
case("se_rank2_input", lambda: nn.SqueezeExcitation(8, 2)(r(2, 8)), ValueError,
     r"SqueezeExcitation\(8\)", r"4-D input", r"\(2, 8\)")
case("digits_cnn_rank3_input", lambda: models.DigitsCNN(width=4)(r(1, 8, 8)), ValueError,
     r"conv2d", r"4 dimensions", r"\(1, 8, 8\)")

# ------------------------------------------------------------------ channels
case("conv2d_weight_vs_input_channels", lambda: F.conv2d(r(1, 3, 8, 8), r(4, 5, 3, 3)),
     ValueError, r"conv2d", r"3 channels", r"expects 5",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 3, 8, 8), t.randn(4, 5, 3, 3)),
     torch_exc=RuntimeError)
case("conv2d_layer_in_channels", lambda: nn.Conv2d(2, 4, 3)(r(1, 3, 8, 8)), ValueError,
     r"conv2d", r"3 channels", r"expects 2",
     torch=lambda t: t.nn.Conv2d(2, 4, 3)(t.randn(1, 3, 8, 8)), torch_exc=RuntimeError)
case("conv2d_bias_shape", lambda: F.conv2d(r(1, 3, 8, 8), r(4, 3, 3, 3), r(5)), ValueError,
     r"conv2d", r"bias of shape \(4,\)", r"\(5,\)",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 3, 8, 8), t.randn(4, 3, 3, 3),
                                            t.randn(5)),
     torch_exc=RuntimeError)
case("batch_norm_running_stats_vs_channels",
     lambda: F.batch_norm(r(2, 3, 4, 4), mc.zeros(4), mc.ones(4)), ValueError,
     r"batch_norm", r"running_mean", r"3 elements", r"\(4,\)",
     torch=lambda t: t.nn.functional.batch_norm(t.randn(2, 3, 4, 4), t.zeros(4), t.ones(4)),
     torch_exc=RuntimeError)
case("batchnorm2d_channels", lambda: nn.BatchNorm2d(4)(r(2, 3, 4, 4)), ValueError,
     r"BatchNorm2d\(4\)", r"4 channels", r"\(2, 3, 4, 4\)",
     torch=lambda t: t.nn.BatchNorm2d(4)(t.randn(2, 3, 4, 4)), torch_exc=RuntimeError)
case("batchnorm1d_channels", lambda: nn.BatchNorm1d(4)(r(2, 3)), ValueError,
     r"BatchNorm1d\(4\)", r"4 channels", r"\(2, 3\)",
     torch=lambda t: t.nn.BatchNorm1d(4)(t.randn(2, 3)), torch_exc=RuntimeError)
case("linear_in_features", lambda: nn.Linear(5, 3)(r(2, 4)), ValueError,
     r"linear", r"\b4\b", r"\b5\b",
     torch=lambda t: t.nn.Linear(5, 3)(t.randn(2, 4)), torch_exc=RuntimeError)
case("cbam_channels", lambda: nn.CBAM(16, reduction=4)(r(1, 8, 4, 4)), ValueError,
     r"ChannelAttention\(16\)", r"16 channels", r"\(1, 8, 4, 4\)")
case("se_channels", lambda: nn.SqueezeExcitation(16)(r(1, 8, 4, 4)), ValueError,
     r"SqueezeExcitation\(16\)", r"16 channels", r"\(1, 8, 4, 4\)")
case("resnet_grayscale_input", lambda: models.resnet18(num_classes=2, stem="cifar")(
     r(1, 1, 8, 8)), ValueError, r"conv2d", r"1 channels", r"expects 3")

# ------------------------------------------------------------------ geometry
case("conv2d_kernel_larger_than_padded_input",
     lambda: F.conv2d(r(1, 1, 2, 2), r(1, 1, 5, 5), padding=1), ValueError,
     r"conv2d", r"kernel size \(5, 5\)", r"padded input \(4, 4\)",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 1, 2, 2), t.randn(1, 1, 5, 5),
                                            padding=1),
     torch_exc=RuntimeError)
case("max_pool2d_kernel_larger_than_input", lambda: F.max_pool2d(r(1, 1, 2, 2), 3), ValueError,
     r"max_pool2d", r"\b3\b", r"\b2\b",
     torch=lambda t: t.nn.functional.max_pool2d(t.randn(1, 1, 2, 2), 3), torch_exc=RuntimeError)
case("avg_pool2d_kernel_larger_than_input", lambda: F.avg_pool2d(r(1, 1, 2, 2), 4), ValueError,
     r"avg_pool2d", r"\b4\b", r"\b2\b",
     torch=lambda t: t.nn.functional.avg_pool2d(t.randn(1, 1, 2, 2), 4), torch_exc=RuntimeError)
case("conv2d_zero_stride", lambda: F.conv2d(r(1, 1, 4, 4), r(1, 1, 3, 3), stride=0),
     ValueError, r"conv2d", r"stride must be positive", r"\(0, 0\)",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 1, 4, 4), t.randn(1, 1, 3, 3), stride=0),
     torch_exc=RuntimeError)
case("conv2d_layer_negative_stride", lambda: nn.Conv2d(1, 1, 3, stride=-1), ValueError,
     r"Conv2d", r"stride must be positive", r"-1")
case("max_pool2d_zero_stride", lambda: F.max_pool2d(r(1, 1, 4, 4), 2, stride=0), ValueError,
     r"max_pool2d", r"stride must be positive", r"0",
     torch=lambda t: t.nn.functional.max_pool2d(t.randn(1, 1, 4, 4), 2, stride=0),
     torch_exc=RuntimeError)
case("conv2d_negative_padding", lambda: F.conv2d(r(1, 1, 4, 4), r(1, 1, 3, 3), padding=-1),
     ValueError, r"conv2d", r"padding must be non-negative", r"-1",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 1, 4, 4), t.randn(1, 1, 3, 3),
                                            padding=-1),
     torch_exc=RuntimeError)
case("conv2d_layer_negative_padding", lambda: nn.Conv2d(1, 1, 3, padding=(1, -2)), ValueError,
     r"Conv2d", r"padding must be non-negative", r"-2")
case("max_pool2d_padding_over_half_kernel", lambda: nn.MaxPool2d(2, padding=2), ValueError,
     r"MaxPool2d", r"at most half of the kernel size", r"padding=2",
     torch=lambda t: t.nn.MaxPool2d(2, padding=2)(t.randn(1, 1, 4, 4)), torch_exc=RuntimeError)
case("conv2d_layer_groups_not_dividing", lambda: nn.Conv2d(6, 4, 3, groups=4), ValueError,
     r"Conv2d", r"in_channels \(6\)", r"groups \(4\)",
     torch=lambda t: t.nn.Conv2d(6, 4, 3, groups=4), torch_exc=ValueError)
case("conv2d_groups_not_dividing", lambda: F.conv2d(r(1, 3, 4, 4), r(4, 1, 3, 3), groups=2),
     ValueError, r"conv2d", r"groups=2", r"input channels \(3\)",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 3, 4, 4), t.randn(4, 1, 3, 3), groups=2),
     torch_exc=RuntimeError)

# ------------------------------------------------------------------ dtype and device
case("conv2d_float32_input_float64_weight",
     lambda: F.conv2d(r(1, 1, 4, 4), r(1, 1, 3, 3, dtype=mc.float64)), TypeError,
     r"conv2d", r"float32", r"float64",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 1, 4, 4),
                                            t.randn(1, 1, 3, 3, dtype=t.float64)),
     torch_exc=RuntimeError)
case("linear_layer_float64_input", lambda: nn.Linear(3, 2)(r(2, 3, dtype=mc.float64)),
     TypeError, r"linear", r"float64", r"float32",
     torch=lambda t: t.nn.Linear(3, 2)(t.randn(2, 3, dtype=t.float64)), torch_exc=RuntimeError)
case("batch_norm_weight_dtype",
     lambda: F.batch_norm(r(2, 3, 2, 2), None, None, r(3, dtype=mc.float64), training=True),
     TypeError, r"batch_norm", r"weight", r"float64", r"float32",
     torch=lambda t: t.nn.functional.batch_norm(t.randn(2, 3, 2, 2), None, None,
                                                t.randn(3, dtype=t.float64), training=True),
     torch_exc=RuntimeError)
case("conv2d_cpu_input_cuda_weight",
     lambda: F.conv2d(r(1, 1, 4, 4), r(1, 1, 3, 3, device="cuda")), RuntimeError,
     r"conv2d", r"one device", r"on cpu", r"on cuda")
case("linear_cuda_layer_cpu_input", lambda: nn.Linear(3, 2).to("cuda")(r(2, 3)), RuntimeError,
     r"linear", r"one device", r"on cpu", r"on cuda")
case("add_cpu_and_cuda", lambda: r(3) + r(3, device="cuda"), RuntimeError,
     r"Add", r"one device", r"on cpu", r"on cuda")
case("conv2d_int64_input",
     lambda: F.conv2d(mc.zeros(1, 1, 4, 4, dtype=mc.int64), mc.zeros(1, 1, 3, 3, dtype=mc.int64)),
     TypeError, r"conv2d", r"floating-point", r"int64")  # PyTorch's CPU conv accepts int64
case("conv2d_layer_int64_input", lambda: nn.Conv2d(1, 1, 3)(mc.zeros(1, 1, 4, 4, dtype=mc.int64)),
     TypeError, r"conv2d", r"int64", r"float32",
     torch=lambda t: t.nn.Conv2d(1, 1, 3)(t.zeros(1, 1, 4, 4, dtype=t.int64)),
     torch_exc=RuntimeError)
case("requires_grad_on_int_tensor", lambda: mc.tensor([1, 2], requires_grad=True), RuntimeError,
     r"requires_grad", r"floating-point", r"int64",
     torch=lambda t: t.tensor([1, 2], requires_grad=True), torch_exc=RuntimeError)
case("mean_of_int_tensor", lambda: mc.tensor([1, 2, 3]).mean(), TypeError,
     r"mean", r"floating-point", r"int64",
     torch=lambda t: t.tensor([1, 2, 3]).mean(), torch_exc=RuntimeError)
case("max_pool2d_int64_input", lambda: F.max_pool2d(mc.zeros(1, 1, 4, 4, dtype=mc.int64), 2),
     TypeError, r"max_pool2d", r"floating-point", r"int64")
case("cross_entropy_int_logits", lambda: F.cross_entropy(mc.zeros(2, 3, dtype=mc.int64),
                                                         labels(0, 1)),
     TypeError, r"cross_entropy", r"floating-point", r"int64",
     torch=lambda t: t.nn.functional.cross_entropy(t.zeros(2, 3, dtype=t.int64), t.tensor([0, 1])),
     torch_exc=RuntimeError)

# ------------------------------------------------------------------ batch statistics
case("batchnorm2d_training_one_value_per_channel",
     lambda: run_training(nn.BatchNorm2d(3), r(1, 3, 1, 1)), ValueError,
     r"batch_norm", r"Expected more than 1 value per channel when training", r"\(1, 3, 1, 1\)",
     torch=lambda t: t.nn.BatchNorm2d(3).train()(t.randn(1, 3, 1, 1)), torch_exc=ValueError)
case("spatial_attention_training_1x1_single_sample",
     lambda: run_training(nn.SpatialAttention(3), r(1, 4, 1, 1)), ValueError,
     r"batch_norm", r"more than 1 value per channel", r"\(1, 1, 1, 1\)")

# ------------------------------------------------------------------ empty tensors
case("max_over_empty_dim", lambda: mc.zeros(0, 3).max(0), IndexError,
     r"max", r"dim(ension)? 0", r"(zero|non-zero|empty|size 0)",
     torch=lambda t: t.zeros(0, 3).max(0), torch_exc=IndexError)
case("amax_over_empty_dim", lambda: mc.zeros(2, 0).amax(1), IndexError,
     r"amax", r"dim(ension)? 1", r"(zero|non-zero|empty|size 0)",
     torch=lambda t: t.zeros(2, 0).amax(1), torch_exc=IndexError)
case("max_of_empty_tensor", lambda: mc.zeros(0).max(), IndexError,
     r"max", r"(zero|non-zero|empty|numel\(\) == 0|size 0)",
     torch=lambda t: t.zeros(0).max(), torch_exc=RuntimeError)
case("adaptive_avg_pool2d_empty_spatial", lambda: F.adaptive_avg_pool2d(mc.zeros(1, 2, 0, 4), 1),
     ValueError, r"adaptive_avg_pool2d", r"non-empty", r"\(1, 2, 0, 4\)")  # PyTorch: NaN

# ------------------------------------------------------------------ labels
case("cross_entropy_label_equals_C", lambda: F.cross_entropy(r(2, 3), labels(0, 3)), IndexError,
     r"cross_entropy", r"target 3", r"3 classes",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([0, 3])),
     torch_exc=IndexError)
case("cross_entropy_negative_label", lambda: F.cross_entropy(r(2, 3), labels(-1, 0)), IndexError,
     r"cross_entropy", r"target -1", r"0 <= target < 3",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([-1, 0])),
     torch_exc=IndexError)
case("nll_loss_label_out_of_range", lambda: F.nll_loss(r(2, 3), labels(7, 0)), IndexError,
     r"nll_loss", r"target 7", r"3 classes",
     torch=lambda t: t.nn.functional.nll_loss(t.randn(2, 3), t.tensor([7, 0])),
     torch_exc=IndexError)
case("cross_entropy_float_labels", lambda: F.cross_entropy(r(2, 3), mc.tensor([0.0, 1.0])),
     TypeError, r"cross_entropy", r"integer class-index targets", r"float32",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([0.0, 1.0])),
     torch_exc=RuntimeError)
case("cross_entropy_target_shape", lambda: F.cross_entropy(r(2, 3), labels(0, 1, 2)), ValueError,
     r"cross_entropy", r"target of shape \(2,\)", r"\(3,\)",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([0, 1, 2])),
     torch_exc=ValueError)

# ------------------------------------------------------------------ NaN / inf
case("anomaly_forward_log_of_negative", anomaly_forward, FloatingPointError,
     r"detect_anomaly", r"Log\.forward", r"nan")
case("anomaly_backward_sqrt_at_zero", anomaly_backward, FloatingPointError,
     r"detect_anomaly", r"Sqrt\.backward", r"inf")

# ------------------------------------------------------------------ autograd misuse
case("backward_twice", backward_twice, RuntimeError, r"backward", r"second time",
     r"retain_graph=True")
case("backward_non_scalar", lambda: (r(3, requires_grad=True) * 2.0).backward(), RuntimeError,
     r"backward", r"scalar outputs", r"\(3,\)",
     torch=lambda t: (t.randn(3, requires_grad=True) * 2.0).backward(), torch_exc=RuntimeError)
case("backward_without_requires_grad", lambda: r(3).sum().backward(), RuntimeError,
     r"backward", r"does not require grad",
     torch=lambda t: t.randn(3).sum().backward(), torch_exc=RuntimeError)
case("backward_gradient_wrong_shape",
     lambda: (r(3, requires_grad=True) * 2.0).backward(mc.ones(4)), RuntimeError,
     r"backward", r"gradient has shape \(4,\)", r"\(3,\)",
     torch=lambda t: (t.randn(3, requires_grad=True) * 2.0).backward(t.ones(4)),
     torch_exc=RuntimeError)
case("data_reassigned_with_wrong_shape", shrink_data_then_backward, RuntimeError,
     r"\w+\.backward returned a gradient", r"shape \(3,\)", r"input of shape \(4,\)")
case("requires_grad_false_on_non_leaf", non_leaf_requires_grad_false, RuntimeError,
     r"requires_grad_", r"leaf",
     torch=lambda t: (t.randn(3, requires_grad=True) * 2.0).requires_grad_(False),
     torch_exc=RuntimeError)
case("load_state_dict_wrong_keys", load_wrong_keys, RuntimeError,
     r"loading state_dict for Linear", r"Missing key\(s\).*\"weight\"",
     r"Unexpected key\(s\).*\"weight_typo\"")
case("load_state_dict_wrong_shapes", load_wrong_shapes, RuntimeError,
     r"loading state_dict for Sequential", r"size mismatch for 0\.weight",
     r"\(5, 3, 3, 3\).*\(4, 3, 3, 3\)", r"size mismatch for 1\.running_mean")

# ------------------------------------------------------------------ views, indexing, shapes
case("reshape_incompatible", lambda: r(2, 3).reshape(4, 2), ValueError,
     r"reshape", r"\(4, 2\)", r"\(2, 3\)",
     torch=lambda t: t.randn(2, 3).reshape(4, 2), torch_exc=RuntimeError)
case("view_two_inferred_dims", lambda: r(2, 3).view(-1, -1), ValueError,
     r"reshape", r"only one dimension can be -1", r"\(-1, -1\)",
     torch=lambda t: t.randn(2, 3).view(-1, -1), torch_exc=RuntimeError)
case("permute_repeated_dim", lambda: r(2, 3, 4).permute(0, 0, 1), ValueError,
     r"permute", r"\(0, 0, 1\)", r"3 dimensions",
     torch=lambda t: t.randn(2, 3, 4).permute(0, 0, 1), torch_exc=RuntimeError)
case("permute_wrong_count", lambda: r(2, 3, 4).permute(1, 0), ValueError,
     r"permute", r"\(1, 0\)", r"3 dimensions",
     torch=lambda t: t.randn(2, 3, 4).permute(1, 0), torch_exc=RuntimeError)
case("transpose_dim_out_of_range", lambda: r(2, 3).transpose(0, 2), IndexError,
     r"transpose", r"dimension 2", r"2 dimensions",
     torch=lambda t: t.randn(2, 3).transpose(0, 2), torch_exc=IndexError)
case("index_out_of_range", lambda: r(2, 3)[0, 5], IndexError,
     r"getitem", r"index 5", r"dimension 1", r"size 3",
     torch=lambda t: t.randn(2, 3)[0, 5], torch_exc=IndexError)
case("too_many_indices", lambda: r(2, 3)[0, 1, 2], IndexError,
     r"getitem", r"too many indices \(3\)", r"2 dimensions",
     torch=lambda t: t.randn(2, 3)[0, 1, 2], torch_exc=IndexError)
case("sum_dim_out_of_range", lambda: r(2, 3).sum(2), IndexError,
     r"sum", r"dimension 2", r"\[-2, 1\]",
     torch=lambda t: t.randn(2, 3).sum(2), torch_exc=IndexError)
case("cat_mismatched_shapes", lambda: mc.cat([r(2, 3), r(2, 4)], 0), ValueError,
     r"cat", r"except in dimension 0", r"\(2, 3\).*\(2, 4\)",
     torch=lambda t: t.cat([t.randn(2, 3), t.randn(2, 4)], 0), torch_exc=RuntimeError)
case("cat_empty_list", lambda: mc.cat([]), ValueError, r"cat", r"non-empty",
     torch=lambda t: t.cat([]), torch_exc=(RuntimeError, ValueError))
case("stack_mismatched_shapes", lambda: mc.stack([r(2), r(3)]), ValueError,
     r"stack", r"\(2,\).*\(3,\)",
     torch=lambda t: t.stack([t.randn(2), t.randn(3)]), torch_exc=RuntimeError)
case("broadcast_add_incompatible", lambda: r(3) + r(4), ValueError,
     r"add", r"\(3,\), \(4,\)", r"cannot be broadcast",
     torch=lambda t: t.randn(3) + t.randn(4), torch_exc=RuntimeError)
case("broadcast_mul_incompatible", lambda: r(2, 3) * r(3, 2), ValueError,
     r"mul", r"\(2, 3\), \(3, 2\)", r"cannot be broadcast",
     torch=lambda t: t.randn(2, 3) * t.randn(3, 2), torch_exc=RuntimeError)
case("expand_incompatible", lambda: r(3, 1).expand(2, 4), ValueError,
     r"expand", r"\(3, 1\)", r"\(2, 4\)",
     torch=lambda t: t.randn(3, 1).expand(2, 4), torch_exc=RuntimeError)
case("matmul_inner_dims", lambda: r(2, 3) @ r(4, 5), ValueError,
     r"matmul", r"\(2, 3\)", r"\(4, 5\)",
     torch=lambda t: t.randn(2, 3) @ t.randn(4, 5), torch_exc=RuntimeError)

# ------------------------------------------------------------------ optimisers and data
case("sgd_negative_lr", lambda: optim.SGD([r(2, requires_grad=True)], lr=-0.1), ValueError,
     r"SGD", r"learning rate", r"-0\.1", r">= 0",
     torch=lambda t: t.optim.SGD([t.randn(2, requires_grad=True)], lr=-0.1), torch_exc=ValueError)
case("adam_negative_lr", lambda: optim.Adam([r(2, requires_grad=True)], lr=-1e-3), ValueError,
     r"Adam", r"learning rate", r"-0\.001",
     torch=lambda t: t.optim.Adam([t.randn(2, requires_grad=True)], lr=-1e-3),
     torch_exc=ValueError)
case("adam_beta_out_of_range",
     lambda: optim.Adam([r(2, requires_grad=True)], betas=(0.9, 1.5)), ValueError,
     r"Adam", r"beta parameter at index 1", r"1\.5", r"0 <= beta < 1",
     torch=lambda t: t.optim.Adam([t.randn(2, requires_grad=True)], betas=(0.9, 1.5)),
     torch_exc=ValueError)
case("sgd_empty_params", optimizer_step_with_empty_group, ValueError,
     r"SGD", r"empty parameter list",
     torch=lambda t: t.optim.SGD([], lr=0.1), torch_exc=ValueError)
case("sgd_non_leaf_param", lambda: optim.SGD([r(2, requires_grad=True) * 2.0], lr=0.1),
     ValueError, r"SGD", r"non-leaf", r"\(2,\)",
     torch=lambda t: t.optim.SGD([t.randn(2, requires_grad=True) * 2.0], lr=0.1),
     torch_exc=ValueError)
case("dataloader_batch_size_zero", lambda: loader(0), ValueError,
     r"DataLoader", r"batch_size must be a positive int", r"got 0",
     torch=lambda t: t.utils.data.DataLoader(t.zeros(4), batch_size=0), torch_exc=ValueError)
case("dataloader_batch_size_float", lambda: loader(2.5), ValueError,
     r"DataLoader", r"batch_size must be a positive int", r"2\.5",
     torch=lambda t: t.utils.data.DataLoader(t.zeros(4), batch_size=2.5), torch_exc=ValueError)

# ------------------------------------------------------------------ attention and models
case("channel_attention_unknown_pool", lambda: nn.ChannelAttention(8, 2, ("avg", "lp")),
     ValueError, r"ChannelAttention", r"pool_types", r"\('avg', 'max'\)", r"'lp'")
case("channel_attention_repeated_pool", lambda: nn.ChannelAttention(8, 2, ("max", "max")),
     ValueError, r"ChannelAttention", r"distinct", r"\('max', 'max'\)")
case("spatial_attention_kernel_5", lambda: nn.SpatialAttention(5), ValueError,
     r"SpatialAttention", r"kernel_size must be 3 or 7", r"got 5")
case("se_reduction_zero", lambda: nn.SqueezeExcitation(8, reduction=0), ValueError,
     r"SqueezeExcitation", r"reduction must be a positive int", r"got 0")
case("cbam_zero_channels", lambda: nn.CBAM(0), ValueError,
     r"ChannelAttention", r"channels must be a positive int", r"got 0")
case("resnet_unknown_attention", lambda: models.resnet18(attention="bam"), ValueError,
     r"make_attention|ResNet", r"attention must be one of", r"'cbam'", r"'bam'")
case("resnet_unknown_attention_variant",
     lambda: models.resnet18(attention="cbam", attention_variant="keras"), ValueError,
     r"make_attention|ResNet", r"attention_variant must be one of", r"'official'", r"'keras'")
case("resnet_unknown_stem", lambda: models.resnet18(stem="tiny"), ValueError,
     r"ResNet", r"stem must be one of", r"'cifar'", r"'tiny'")
case("digits_cnn_unknown_attention", lambda: models.DigitsCNN(attention="eca"), ValueError,
     r"make_attention|DigitsCNN", r"attention must be one of", r"'se'", r"'eca'")
case("train_unknown_model_name", lambda: make_model("vgg16", "cbam", 10, 3), UserError,
     r"unknown model 'vgg16'", r"resnet18")
case("train_unknown_attention_name", lambda: make_model("resnet18", "bam", 10, 3), UserError,
     r"unknown attention 'bam'", r"cbam")

# ------------------------------------------------------------------ misc
case("sgd_nesterov_without_momentum",
     lambda: optim.SGD([r(2, requires_grad=True)], lr=0.1, nesterov=True), ValueError,
     r"SGD", r"Nesterov", r"momentum > 0",
     torch=lambda t: t.optim.SGD([t.randn(2, requires_grad=True)], lr=0.1, nesterov=True),
     torch_exc=ValueError)
case("sgd_single_tensor_params", lambda: optim.SGD(r(2, requires_grad=True), lr=0.1), TypeError,
     r"SGD", r"iterable of Tensors", r"single Tensor",
     torch=lambda t: t.optim.SGD(t.randn(2, requires_grad=True), lr=0.1), torch_exc=TypeError)
case("cross_entropy_label_smoothing_above_one",
     lambda: F.cross_entropy(r(2, 3), labels(0, 1), label_smoothing=1.5), ValueError,
     r"cross_entropy", r"label_smoothing must be in \[0, 1\]", r"1\.5",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([0, 1]),
                                                   label_smoothing=1.5),
     torch_exc=RuntimeError)
case("cross_entropy_unknown_reduction",
     lambda: F.cross_entropy(r(2, 3), labels(0, 1), reduction="avg"), ValueError,
     r"cross_entropy", r"'none', 'mean', 'sum'", r"'avg'",
     torch=lambda t: t.nn.functional.cross_entropy(t.randn(2, 3), t.tensor([0, 1]),
                                                   reduction="avg"),
     torch_exc=ValueError)
case("mse_loss_incompatible_shapes", lambda: F.mse_loss(r(3), r(4)), ValueError,
     r"mse_loss", r"\(3,\), \(4,\)", r"cannot be broadcast",
     torch=lambda t: t.nn.functional.mse_loss(t.randn(3), t.randn(4)), torch_exc=RuntimeError)
case("conv2d_unknown_padding_string",
     lambda: F.conv2d(r(1, 1, 4, 4), r(1, 1, 3, 3), padding="full"), ValueError,
     r"conv2d", r"'valid', 'same'", r"'full'",
     torch=lambda t: t.nn.functional.conv2d(t.randn(1, 1, 4, 4), t.randn(1, 1, 3, 3),
                                            padding="full"),
     torch_exc=RuntimeError)
case("conv2d_layer_same_padding_strided", lambda: nn.Conv2d(1, 1, 3, stride=2, padding="same"),
     ValueError, r"Conv2d", r"padding='same'", r"strided",
     torch=lambda t: t.nn.Conv2d(1, 1, 3, stride=2, padding="same"), torch_exc=ValueError)
case("load_state_dict_not_a_mapping", lambda: nn.Linear(2, 2).load_state_dict([1, 2]), TypeError,
     r"load_state_dict", r"dict-like", r"list",
     torch=lambda t: t.nn.Linear(2, 2).load_state_dict([1, 2]), torch_exc=TypeError)
case("float16_tensor", lambda: mc.tensor(np.zeros(2, np.float16)), TypeError,
     r"tensor", r"float16", r"float32, float64")
case("save_unsupported_suffix", lambda: save({"a": np.ones(1)}, "model.pth"), ValueError,
     r"cannot save 'model\.pth'", r"\.safetensors, \.npz")
case("load_missing_file", lambda: mc.load("/nonexistent/minicbam/ckpt.npz"), FileNotFoundError,
     r"/nonexistent/minicbam/ckpt\.npz")
case("item_of_many_elements", lambda: r(2, 2).item(), ValueError,
     r"item", r"one-element", r"\(2, 2\)",
     torch=lambda t: t.randn(2, 2).item(), torch_exc=RuntimeError)
case("softmax_dim_out_of_range", lambda: F.softmax(r(2, 3), dim=2), IndexError,
     r"softmax", r"dimension 2",
     torch=lambda t: t.softmax(t.randn(2, 3), dim=2), torch_exc=IndexError)
case("dropout_p_above_one", lambda: F.dropout(r(3), p=1.5), ValueError,
     r"dropout", r"probability|p ", r"1\.5",
     torch=lambda t: t.nn.functional.dropout(t.randn(3), p=1.5), torch_exc=ValueError)
case("unknown_device", lambda: r(3).to("tpu"), ValueError, r"device", r"'tpu'",
     torch=lambda t: t.randn(3).to("tpu"), torch_exc=RuntimeError)

# ------------------------------------------------------------------ Python protocols
case("bool_of_two_elements", lambda: bool(r(2) > 0), RuntimeError,
     r"Boolean value of Tensor", r"more than one value", r"ambiguous",
     torch=lambda t: bool(t.randn(2) > 0), torch_exc=RuntimeError)
case("bool_of_empty_tensor", lambda: bool(mc.zeros(0)), RuntimeError,
     r"Boolean value of Tensor", r"no values",
     torch=lambda t: bool(t.zeros(0)), torch_exc=RuntimeError)
case("float_of_two_elements", lambda: float(r(2)), ValueError,
     r"float\(\)", r"one element", r"\(2,\)",
     torch=lambda t: float(t.randn(2)), torch_exc=ValueError)
case("int_of_matrix", lambda: int(r(2, 2)), ValueError, r"int\(\)", r"one element", r"\(2, 2\)",
     torch=lambda t: int(t.randn(2, 2)), torch_exc=ValueError)
case("iterate_0d_tensor", lambda: list(mc.tensor(1.0)), TypeError, r"iteration over a 0-d tensor",
     torch=lambda t: list(t.tensor(1.0)), torch_exc=TypeError)
case("index_with_float_tensor", lambda: [1, 2][mc.tensor(1.0)], TypeError,
     r"only integer tensors of a single element", r"float32",
     torch=lambda t: [1, 2][t.tensor(1.0)], torch_exc=TypeError)
case("format_spec_on_vector", lambda: f"{r(2):.3f}", TypeError, r"format",
     torch=lambda t: f"{t.randn(2):.3f}", torch_exc=TypeError)

# ------------------------------------------------------------------ in-place and versions
case("inplace_on_leaf_requiring_grad", lambda: r(3, requires_grad=True).add_(1.0), RuntimeError,
     r"add_", r"leaf Variable that requires grad", r"in-place", r"no_grad",
     torch=lambda t: t.randn(3, requires_grad=True).add_(1.0), torch_exc=RuntimeError)
case("augmented_assignment_on_leaf", lambda: r(3, requires_grad=True).__isub__(1.0), RuntimeError,
     r"sub_", r"leaf Variable that requires grad",
     torch=lambda t: t.randn(3, requires_grad=True).__isub__(1.0), torch_exc=RuntimeError)
case("inplace_would_broadcast_self", lambda: r(3).mul_(r(2, 3)), RuntimeError,
     r"mul_", r"output with shape \(3,\)", r"broadcast shape \(2, 3\)",
     torch=lambda t: t.randn(3).mul_(t.randn(2, 3)), torch_exc=RuntimeError)
case("inplace_float_into_int", lambda: mc.tensor([1, 2]).add_(0.5), RuntimeError,
     r"add_", r"result type float32", r"output type int64",
     torch=lambda t: t.tensor([1, 2]).add_(0.5), torch_exc=RuntimeError)
case("inplace_true_division_of_int", lambda: mc.tensor([1, 2]).div_(2), RuntimeError,
     r"div_", r"float32", r"int64",
     torch=lambda t: t.tensor([1, 2]).div_(2), torch_exc=RuntimeError)
case("fill_with_vector", lambda: r(3).fill_(r(2)), RuntimeError,
     r"fill_", r"0-dimensional", r"\(2,\)",
     torch=lambda t: t.randn(3).fill_(t.randn(2)), torch_exc=RuntimeError)
case("backward_after_adam_step", lambda: step_then_backward(optim.Adam), RuntimeError,
     r"backward", r"modified by an inplace operation", r"Mul", r"version 1",
     torch=torch_step_then_backward, torch_exc=RuntimeError)
case("backward_after_sgd_step", lambda: step_then_backward(lambda p: optim.SGD(p, lr=0.1)),
     RuntimeError, r"modified by an inplace operation", r"Mul")
case("backward_after_clamp_", inplace_then_backward, RuntimeError,
     r"modified by an inplace operation", r"Sigmoid")

# ------------------------------------------------------------------ unsupported dtypes
case("float16_zeros", lambda: mc.zeros(2, dtype=np.float16), TypeError,
     r"zeros", r"float16", r"supported dtypes are bool, .*float32, float64")
case("float16_ones", lambda: mc.ones(2, dtype=np.float16), TypeError, r"ones", r"float16")
case("float16_full", lambda: mc.full((2,), 1.0, dtype=np.float16), TypeError, r"full", r"float16")
case("float16_linear", lambda: nn.Linear(2, 2, dtype=np.float16), TypeError,
     r"Linear", r"float16", r"floating-point dtypes are float32, float64")
case("float16_conv2d", lambda: nn.Conv2d(1, 1, 3, dtype=np.float16), TypeError,
     r"Conv2d", r"float16", r"float32, float64")
case("float16_batchnorm", lambda: nn.BatchNorm2d(3, dtype=np.float16), TypeError,
     r"BatchNorm2d", r"float16", r"float32, float64")
case("float16_tensor_to", lambda: r(2).to(np.float16), TypeError,
     r"to", r"float16", r"float32, float64")
case("float16_module_to", lambda: nn.Linear(2, 2).to(np.float16), TypeError,
     r"nn\.Module\.to", r"float16", r"float32, float64")
case("longdouble_tensor", lambda: mc.tensor(np.zeros(2, np.longdouble)), TypeError,
     r"tensor", r"float128", r"float32, float64")
case("complex_tensor", lambda: mc.tensor([1j]), TypeError, r"tensor", r"complex128",
     r"supported dtypes")
case("string_tensor", lambda: mc.tensor(["a", "b"]), TypeError, r"tensor", r"<U1",
     r"supported dtypes", torch=lambda t: t.tensor(["a", "b"]), torch_exc=ValueError)
case("object_tensor", lambda: mc.tensor(np.array([1, "a"], dtype=object)), TypeError,
     r"tensor", r"object", r"supported dtypes")
case("uint64_tensor", lambda: mc.tensor(np.zeros(2, np.uint64)), TypeError,
     r"tensor", r"uint64", r"supported dtypes")
case("python_int_beyond_int64", lambda: mc.tensor([2**70]), TypeError, r"tensor", r"object")
case("randn_integer_dtype", lambda: mc.randn(2, dtype=mc.int64), TypeError,
     r"randn", r"int64", r"float32, float64")
case("not_a_dtype", lambda: mc.zeros(2, dtype="floaty"), TypeError, r"zeros", r"'floaty'")

# ------------------------------------------------------------------ extreme parameters
case("batch_norm_eps_zero_training",
     lambda: F.batch_norm(r(4, 3), None, None, training=True, eps=0.0), ValueError,
     r"batch_norm", r"eps must be positive during training", r"\b0\.0\b",
     torch=lambda t: t.nn.functional.batch_norm(t.randn(4, 3), None, None, training=True, eps=0),
     torch_exc=ValueError)
case("batchnorm2d_negative_eps", lambda: run_training(nn.BatchNorm2d(3, eps=-1e-5), r(2, 3, 2, 2)),
     ValueError, r"batch_norm", r"eps must be positive", r"-1e-05",
     torch=lambda t: t.nn.BatchNorm2d(3, eps=-1e-5).train()(t.randn(2, 3, 2, 2)),
     torch_exc=ValueError)

# fmt: on


# ------------------------------------------------------------------ the tests


def _ids():
    return [c.id for c in CASES]


def test_catalogue_is_large_and_ids_are_unique():
    assert len(CASES) >= 45
    assert len(set(_ids())) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=_ids())
def test_bad_input_raises_a_clear_error(c):
    with pytest.raises(Exception) as info:
        c.fn()
    error = info.value
    assert type(error) is c.exc or isinstance(error, c.exc), (
        f"{c.id}: expected {c.exc.__name__}, got {type(error).__name__}: {error}"
    )
    message = str(error)
    for pattern in c.patterns:
        assert re.search(pattern, message, re.DOTALL), (
            f"{c.id}: message {message!r} does not match {pattern!r}"
        )


TORCH_CASES = [c for c in CASES if c.torch_fn is not None]


@pytest.mark.filterwarnings("ignore::UserWarning")  # mse_loss: torch warns, then raises
@pytest.mark.parametrize("c", TORCH_CASES, ids=[c.id for c in TORCH_CASES])
def test_pytorch_rejects_the_same_input(c):
    """The row's claim about PyTorch holds (the catalogue documents each type difference)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(c.torch_exc):
        c.torch_fn(torch)


def test_loading_a_checkpoint_of_another_model_names_the_keys(tmp_path):
    with pytest.raises(RuntimeError) as info:
        load_resnet_from_other_checkpoint(tmp_path)
    message = str(info.value)
    assert "loading state_dict for DigitsCNN" in message
    assert re.search(r"Missing key\(s\).*block1\.attn\.channel\.mlp\.0\.weight", message, re.DOTALL)
    assert re.search(r"Unexpected key\(s\).*block1\.attn\.fc1\.weight", message, re.DOTALL)


def test_cross_entropy_with_an_empty_batch_is_nan_as_in_pytorch():
    """PyTorch does not raise for N = 0: "mean" is 0/0 = NaN, "sum" is 0, "none" is empty."""
    x = mc.zeros(0, 3, requires_grad=True)
    t = mc.tensor(np.zeros(0, dtype=np.int64))
    assert np.isnan(F.cross_entropy(x, t).item())
    assert F.cross_entropy(x, t, reduction="sum").item() == 0.0
    assert F.cross_entropy(x, t, reduction="none").shape == (0,)
    torch = pytest.importorskip("torch")
    xt = torch.zeros(0, 3)
    tt = torch.zeros(0, dtype=torch.int64)
    assert torch.isnan(torch.nn.functional.cross_entropy(xt, tt))
    assert torch.nn.functional.cross_entropy(xt, tt, reduction="sum").item() == 0.0
