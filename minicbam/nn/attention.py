"""Attention modules: Squeeze-and-Excitation and CBAM (channel, spatial, both).

Every module maps a feature map ``F`` of shape ``(N, C, H, W)`` to ``F`` rescaled by weights
in (0, 1): ``F' = M(F) * F`` with ``M(F)`` broadcast over the dimensions it lacks.

**SE** (Hu et al., CVPR 2018, Eq. 2-4), ``hidden = max(1, C // reduction)``::

    z = mean_{h,w} F                                  (N, C)        squeeze, Eq. 2
    s = sigmoid(W2 relu(W1 z + b1) + b2)              (N, C)        excitation, Eq. 3
    F' = s[:, :, None, None] * F                                    scale, Eq. 4

**CBAM** (Woo et al., ECCV 2018) refines channels first, then positions (Eq. 1)::

    F'  = M_c(F) * F                                  M_c: (N, C, 1, 1)
    F'' = M_s(F') * F'                                M_s: (N, 1, H, W)

Channel attention (Eq. 2) sends both global pools through ONE shared MLP, sums, squashes::

    M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))),   MLP(z) = W1 relu(W0 z + b0) + b1

Spatial attention (Eq. 3) pools over channels (mean first, then max, as the paper writes
``[AvgPool(F); MaxPool(F)]``) and convolves the two maps into one::

    M_s(F) = sigmoid(BN(conv_kxk([mean_c F; max_c F])))             k in {3, 7}

The BatchNorm is the official code's (its ``BasicConv`` is conv + BN; timm does the same);
the paper's equation has none, so ``CBAM.paper`` leaves it out.

Hot path (docs/design.md, "Fusion"): ``F.global_pool`` computes all global pools in one pass,
``F.channel_pool`` the (mean, max) channel maps in one pass, and ``F.gate`` is the fused
``x * sigmoid(logits)`` with its backward. The shared MLP runs once on the stacked pools
``(P * N, C)``; since it acts row by row, that equals running it once per pool.

After each forward a module keeps its attention maps, detached, for study and plots:
``last_channel_weights`` ``(N, C, 1, 1)`` (SE, ChannelAttention, CBAM) and
``last_spatial_map`` ``(N, 1, H, W)`` (SpatialAttention, CBAM); None before the first call.

Presets (``CBAM.official``, ``CBAM.timm``, ``CBAM.paper``) build the three published variants:

=========  ========  ==========================================  ================================
preset     MLP bias  hidden                                      spatial BN
=========  ========  ==========================================  ================================
official   yes       max(1, C // reduction)                      eps 1e-5, momentum 0.01, weight 0
timm       no        max(1, round-half-up(C / reduction))        PyTorch defaults
paper      no        max(1, C // reduction)                      none (Eq. 3 has no BN)
=========  ========  ==========================================  ================================
"""

from minicbam.function import no_grad
from minicbam.nn import functional as F
from minicbam.nn import init
from minicbam.nn.activation import ReLU
from minicbam.nn.batchnorm import BatchNorm2d
from minicbam.nn.container import Sequential
from minicbam.nn.conv import Conv2d
from minicbam.nn.linear import Linear
from minicbam.nn.module import Module
from minicbam.ops.global_pool import POOL_TYPES

__all__ = [
    "CBAM",
    "ChannelAttention",
    "SpatialAttention",
    "SqueezeExcitation",
    "make_attention",
    "official_init_",
    "timm_hidden",
]

KERNEL_SIZES = (3, 7)


# ----------------------------------------------------------------------------- checks
def _check_channels(owner, channels, reduction):
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{owner}: channels must be a positive int, got {channels!r}")
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"{owner}: reduction must be a positive int, got {reduction!r}")


def _check_input(name, x, channels=None):
    """4-D input, with ``channels`` channels when given; ``name`` starts the message."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected input with {channels} channels, got shape {x.shape}")


def _hidden(channels, reduction, hidden):
    return max(1, channels // reduction) if hidden is None else int(hidden)


def _detached_sigmoid(logits):
    with no_grad():
        return F.sigmoid(logits).detach()


# ----------------------------------------------------------------------------- SE
class SqueezeExcitation(Module):
    """SE block: global average pool -> fc1 -> ReLU -> fc2 -> sigmoid -> scale (Eq. 2-4).

    Keys: ``fc1.weight (hidden, C)``, ``fc1.bias``, ``fc2.weight (C, hidden)``, ``fc2.bias``.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        _check_channels("SqueezeExcitation", channels, reduction)
        self.channels, self.reduction = channels, reduction
        hidden = _hidden(channels, reduction, None)
        self.fc1 = Linear(channels, hidden)
        self.relu = ReLU()
        self.fc2 = Linear(hidden, channels)
        self.last_channel_weights = None

    def forward(self, x):
        _check_input(f"{type(self).__name__}({self.channels})", x, self.channels)
        n, c = x.shape[:2]
        z = F.global_pool(x, ("avg",)).reshape(n, c)  # (1, N, C) -> (N, C), Eq. 2
        logits = self.fc2(self.relu(self.fc1(z))).reshape(n, c, 1, 1)
        self.last_channel_weights = _detached_sigmoid(logits)
        return F.gate(x, logits)  # x * sigmoid(logits), Eq. 3-4

    def extra_repr(self):
        return f"{self.channels}, reduction={self.reduction}"


# ----------------------------------------------------------------------------- CBAM parts
class ChannelAttention(Module):
    """CBAM's channel attention (Eq. 2): each global pool -> shared MLP, summed -> sigmoid.

    ``pool_types`` is a non-empty subset of ``("avg", "max")``; ``bias`` toggles the MLP's
    biases; ``hidden`` overrides ``max(1, channels // reduction)`` (timm rounds differently).
    Keys: ``mlp.0.weight (hidden, C)``, ``mlp.0.bias``, ``mlp.2.weight (C, hidden)``,
    ``mlp.2.bias`` (no biases when ``bias=False``).
    """

    def __init__(self, channels, reduction=16, pool_types=POOL_TYPES, bias=True, hidden=None):
        super().__init__()
        _check_channels("ChannelAttention", channels, reduction)
        self.pool_types = _check_pool_types(pool_types)
        self.channels, self.reduction = channels, reduction
        self.hidden = _hidden(channels, reduction, hidden)
        if self.hidden < 1:
            raise ValueError(f"ChannelAttention: hidden must be positive, got {hidden!r}")
        self.mlp = Sequential(
            Linear(channels, self.hidden, bias=bias),
            ReLU(),
            Linear(self.hidden, channels, bias=bias),
        )
        self.last_channel_weights = None

    def logits(self, x):
        """Pre-sigmoid channel attention ``(N, C, 1, 1)``: the sum of Eq. 2's MLP outputs."""
        n, c = x.shape[:2]
        pools = F.global_pool(x, self.pool_types)  # (P, N, C): all pools in one pass
        p = len(self.pool_types)
        mlp_out = self.mlp(pools.reshape(p * n, c))  # the MLP acts per row: one call for all
        return mlp_out.reshape(p, n, c).sum(0).reshape(n, c, 1, 1)

    def forward(self, x):
        _check_input(f"{type(self).__name__}({self.channels})", x, self.channels)
        logits = self.logits(x)
        self.last_channel_weights = _detached_sigmoid(logits)
        return F.gate(x, logits)

    def extra_repr(self):
        return (
            f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}, "
            f"pool_types={self.pool_types}"
        )


def _check_pool_types(pool_types):
    kinds = (pool_types,) if isinstance(pool_types, str) else tuple(pool_types)
    if not kinds or any(k not in POOL_TYPES for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"ChannelAttention: pool_types must be distinct entries of {POOL_TYPES}, "
            f"got {pool_types!r}"
        )
    return kinds


class SpatialAttention(Module):
    """CBAM's spatial attention (Eq. 3): [mean_c, max_c] -> conv k x k -> BN -> sigmoid.

    ``kernel_size`` is 3 or 7 (the paper's choices); the conv has no bias and ``k // 2``
    padding, so the map keeps H x W. ``norm=False`` drops the BatchNorm (the paper's Eq. 3);
    ``eps`` and ``momentum`` are the BatchNorm's. Keys: ``conv.weight (1, 2, k, k)``,
    ``bn.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``,
    ``bn.num_batches_tracked``.
    """

    def __init__(self, kernel_size=7, norm=True, eps=1e-5, momentum=0.1):
        super().__init__()
        if kernel_size not in KERNEL_SIZES:
            raise ValueError(f"SpatialAttention: kernel_size must be 3 or 7, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.add_module("bn", BatchNorm2d(1, eps=eps, momentum=momentum) if norm else None)
        self.last_spatial_map = None

    def logits(self, x):
        """Pre-sigmoid spatial attention ``(N, 1, H, W)``."""
        pooled = F.channel_pool(x)  # (N, 2, H, W): [mean over C, max over C]
        y = self.conv(pooled)
        return y if self.bn is None else self.bn(y)

    def forward(self, x):
        _check_input(f"SpatialAttention(kernel_size={self.kernel_size})", x)
        logits = self.logits(x)
        self.last_spatial_map = _detached_sigmoid(logits)
        return F.gate(x, logits)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}"


# ----------------------------------------------------------------------------- CBAM
class CBAM(Module):
    """Channel attention then spatial attention (Eq. 1). ``spatial=False`` keeps the first.

    Keys: ``channel.*`` (ChannelAttention) and ``spatial.*`` (SpatialAttention).
    Keyword-only options: ``bias`` (MLP biases), ``hidden`` (MLP width override), ``norm``,
    ``bn_eps``, ``bn_momentum`` (spatial BatchNorm). The maps of the last forward are
    ``last_channel_weights`` (N, C, 1, 1) and ``last_spatial_map`` (N, 1, H, W).
    """

    def __init__(
        self,
        channels,
        reduction=16,
        kernel_size=7,
        pool_types=POOL_TYPES,
        spatial=True,
        *,
        bias=True,
        hidden=None,
        norm=True,
        bn_eps=1e-5,
        bn_momentum=0.1,
    ):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, pool_types, bias, hidden)
        spatial_module = SpatialAttention(kernel_size, norm, bn_eps, bn_momentum)
        self.add_module("spatial", spatial_module if spatial else None)

    def forward(self, x):
        x = self.channel(x)  # F' = M_c(F) * F
        return x if self.spatial is None else self.spatial(x)  # F'' = M_s(F') * F'

    @property
    def last_channel_weights(self):
        return self.channel.last_channel_weights

    @property
    def last_spatial_map(self):
        return None if self.spatial is None else self.spatial.last_spatial_map

    # ------------------------------------------------------------------ presets
    @classmethod
    def official(cls, channels, reduction=16, kernel_size=7, pool_types=POOL_TYPES, spatial=True):
        """Jongchan/attention-module's CBAM, initialised as its ``ResidualNet`` does.

        MLP with biases, ``hidden = C // reduction``, spatial BN(eps=1e-5, momentum=0.01).
        Initialisation: every bias 0, spatial conv ``kaiming_normal_(mode="fan_out")`` and
        spatial BN weight 0, so M_s starts at sigmoid(0) = 1/2 everywhere; the MLP weights keep
        the Linear default. Load its weights with ``minicbam.io.interop.from_official``.
        """
        module = cls(channels, reduction, kernel_size, pool_types, spatial, bn_momentum=0.01)
        official_init_(module.channel)
        if module.spatial is not None:
            official_init_(module.spatial)
        return module

    @classmethod
    def timm(cls, channels, reduction=16, kernel_size=7, pool_types=POOL_TYPES, spatial=True):
        """timm's ``CbamModule``: bias-free MLP, BatchNorm defaults, PyTorch default init.

        ``hidden = make_divisible(channels / reduction, 1, round_limit=0.)``, i.e. the ratio
        rounded half up, at least 1 (timm's ``rd_ratio = 1 / reduction``). Load its weights
        with ``minicbam.io.interop.from_timm``.
        """
        hidden = timm_hidden(channels, reduction)
        return cls(channels, reduction, kernel_size, pool_types, spatial, bias=False, hidden=hidden)

    @classmethod
    def paper(cls, channels, reduction=16, kernel_size=7, pool_types=POOL_TYPES, spatial=True):
        """Eq. 2-3 as printed: bias-free MLP ``W1 relu(W0 z)``, spatial conv without BN."""
        return cls(channels, reduction, kernel_size, pool_types, spatial, bias=False, norm=False)


def timm_hidden(channels, reduction):
    """timm's ``make_divisible(channels * (1 / reduction), divisor=1, round_limit=0.)``."""
    return max(1, int(channels * (1.0 / reduction) + 0.5))  # timm's float, bit for bit


# ----------------------------------------------------------------------------- factory
ATTENTION_KINDS = (None, "se", "cam", "sam", "cbam")
VARIANTS = ("default", "official", "timm", "paper")


def make_attention(kind, channels, variant="default", reduction=16, kernel_size=7, **kwargs):
    """The attention module for ``kind`` in ``ATTENTION_KINDS`` (None gives None).

    ``"se"``: SqueezeExcitation; ``"cam"``: CBAM without its spatial part (keys
    ``channel.*``, as the official code's ``no_spatial=True``); ``"sam"``: SpatialAttention;
    ``"cbam"``: CBAM. ``variant`` picks a CBAM preset (``CBAM.official`` ...) for the CBAM
    kinds; ``kwargs`` go to the constructor (e.g. ``pool_types``).
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(
            f"make_attention: attention must be one of {ATTENTION_KINDS}, got {kind!r}"
        )
    if variant not in VARIANTS:
        raise ValueError(
            f"make_attention: attention_variant must be one of {VARIANTS}, got {variant!r}"
        )
    if kind is None:
        return None
    if kind == "se":
        return SqueezeExcitation(channels, reduction, **kwargs)
    if kind == "sam":
        return _spatial_preset(variant, kernel_size, **kwargs)
    build = CBAM if variant == "default" else getattr(CBAM, variant)
    return build(channels, reduction, kernel_size, spatial=kind == "cbam", **kwargs)


def _spatial_preset(variant, kernel_size, **kwargs):
    if variant == "official":
        return official_init_(SpatialAttention(kernel_size, momentum=0.01, **kwargs))
    return SpatialAttention(kernel_size, norm=variant != "paper", **kwargs)


def official_init_(module):
    """The official ``ResidualNet`` init of one attention part, in place; returns it.

    That code zeroes every ``bias``, draws conv weights with ``kaiming_normal_(mode="fan_out")``
    and sets the ``SpatialGate`` BN weight to 0; the MLP's Linear weights keep their default.
    """
    with no_grad():
        if isinstance(module, ChannelAttention):
            for layer in (module.mlp[0], module.mlp[2]):
                if layer.bias is not None:
                    init.zeros_(layer.bias)
        elif isinstance(module, SpatialAttention):
            init.kaiming_normal_(module.conv.weight, mode="fan_out")
            if module.bn is not None:
                init.zeros_(module.bn.weight)
                init.zeros_(module.bn.bias)
        else:
            raise TypeError(f"official_init_: expected a CBAM part, got {type(module).__name__}")
    return module
