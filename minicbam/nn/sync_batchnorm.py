"""``SyncBatchNorm``: batch norm whose training statistics span the batch of every rank.

In training, with a ``minicbam.distributed`` group of more than one rank, the forward pass
is ``minicbam.ops.sync_batch_norm`` (its docstring has the statistics and the exact
gradient); otherwise (evaluation, or a single process) it is ``BatchNorm``'s. Inputs are
(N, C, *), as in PyTorch. ``convert_sync_batchnorm(module)`` replaces every ``BatchNorm1d``
and ``BatchNorm2d`` of a model -- CBAM's spatial-attention BN included -- by a
``SyncBatchNorm`` that shares its parameters and buffers.
"""

from minicbam import distributed as dist
from minicbam.nn.batchnorm import _BatchNorm
from minicbam.ops.sync_batch_norm import sync_batch_norm

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(_BatchNorm):
    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        bias=True,
    ):
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.ndim < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (got {input.ndim}D input)")

    def _group(self):
        if self.process_group is not None:
            return self.process_group
        return dist.default_group() if dist.is_initialized() else None

    def forward(self, input):
        self._check_input_dim(input)
        self._check_channels(input)
        group = self._group()
        if not self.training or group is None or group.size == 1:
            return self._normalize(input)
        factor = self._average_factor()
        track = self.track_running_stats
        return sync_batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            factor,
            self.eps,
            group,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``module`` with every BatchNorm replaced (recursively); a BatchNorm itself is
        returned as a new ``SyncBatchNorm`` sharing its tensors."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            return _converted(cls, module, process_group)
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child, process_group)
            if converted is not child:
                module._modules[name] = converted  # in place: parameter order unchanged
        return module


def _converted(cls, bn, process_group):
    out = cls(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        process_group,
        bias=bn.bias is not None,
    )
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(out, name, getattr(bn, name))  # the same Parameter: optimisers keep it
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(out, name, getattr(bn, name))
    out.train(bn.training)
    return out
