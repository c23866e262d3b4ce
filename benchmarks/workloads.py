"""The benchmark workloads: a registry of named workloads, each with a minicbam builder and a
PyTorch builder of the same computation (same shapes and structure).

Shapes follow the issue's anchors: attention modules and ops on (64, 64, 32, 32) float32;
ResNet18-CBAM (CIFAR stem) train step / evaluation at batch 64 on 32x32; the digits CNN
with CBAM train step at batch 128 on 8x8.

Adding a workload::

    register("name", describe, minicbam_builder, torch_builder)

``describe(quick)`` returns ``(what, unit, per_call)`` (``per_call`` work units per call, e.g.
images or GFLOP, 0 for none); ``minicbam_builder(quick)`` and ``torch_builder(torch, quick)``
each return a no-argument callable, one step of the workload. ``quick`` selects smaller shapes.

This module must not import minicbam at the top: run.py imports it in the PyTorch process too,
and ``import minicbam`` changes the OpenMP environment (OMP_WAIT_POLICY), which would change
PyTorch's own defaults. minicbam is imported inside the minicbam builders only.
"""

import collections
import time

import numpy as np

Workload = collections.namedtuple("Workload", "describe minicbam torch")

WORKLOADS = {}

DIGITS_WIDTH = 32  # models.DigitsCNN's default width; the torch twin uses the same


def register(name, describe, minicbam, torch):
    """Add a workload; names are unique (a second registration is a bug)."""
    if name in WORKLOADS:
        raise ValueError(f"workload {name!r} is registered twice")
    WORKLOADS[name] = Workload(describe, minicbam, torch)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- steps
def mc_fwd_bwd(module, x):
    def step():
        module.zero_grad()
        x.grad = None
        module(x).sum().backward()

    return step


def mc_fwd(module, x):
    import minicbam as mc

    def step():
        with mc.no_grad():
            module(x)

    return step


def mc_conv_steps(x, w, stride=1, padding=0):
    """(forward under no_grad, forward + backward of the sum) of conv2d(x, w) as steps."""
    import minicbam as mc
    import minicbam.nn.functional as F

    def forward():
        with mc.no_grad():
            F.conv2d(x, w, stride=stride, padding=padding)

    def forward_backward():
        x.grad = w.grad = None
        F.conv2d(x, w, stride=stride, padding=padding).sum().backward()

    return forward, forward_backward


def median_ms(step, calls, warmup):
    """Median wall time of ``calls`` calls of ``step`` after ``warmup`` untimed ones, in ms
    (for the one-framework before/after scripts; run.py has its own per-process timing)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def torch_fwd_bwd(module, x):
    def step():
        module.zero_grad()
        x.grad = None
        module(x).sum().backward()

    return step


def torch_fwd(torch, module, x):
    def step():
        with torch.no_grad():
            module(x)

    return step


def mc_train_step(model, opt, x, y):
    import minicbam.nn.functional as F

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def torch_train_step(torch, model, opt, x, y):
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


# ----------------------------------------------------------------------------- torch twins
def torch_modules(torch):
    """PyTorch versions of minicbam's attention modules (same structure, plain tensor ops)."""
    tnn = torch.nn

    class ChannelAttention(tnn.Module):
        def __init__(self, c, reduction=16):
            super().__init__()
            hidden = max(1, c // reduction)
            self.mlp = tnn.Sequential(tnn.Linear(c, hidden), tnn.ReLU(), tnn.Linear(hidden, c))

        def forward(self, x):
            a = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
            return x * torch.sigmoid(a)[:, :, None, None]

    class SpatialAttention(tnn.Module):
        def __init__(self, k=7):
            super().__init__()
            self.conv = tnn.Conv2d(2, 1, k, padding=k // 2, bias=False)
            self.bn = tnn.BatchNorm2d(1)

        def forward(self, x):
            s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
            return x * torch.sigmoid(self.bn(self.conv(s)))

    class CBAM(tnn.Module):
        def __init__(self, c, reduction=16):
            super().__init__()
            self.channel = ChannelAttention(c, reduction)
            self.spatial = SpatialAttention()

        def forward(self, x):
            return self.spatial(self.channel(x))

    class SE(tnn.Module):
        def __init__(self, c, reduction=16):
            super().__init__()
            hidden = max(1, c // reduction)
            self.fc1, self.fc2 = tnn.Linear(c, hidden), tnn.Linear(hidden, c)

        def forward(self, x):
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
            return x * s[:, :, None, None]

    return {"cbam": CBAM, "cam": ChannelAttention, "sam": SpatialAttention, "se": SE}


def torch_resnet18_cbam(torch, num_classes=10):
    tnn = torch.nn
    CBAM = torch_modules(torch)["cbam"]

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.attn = CBAM(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.attn(self.bn2(self.conv2(out)))
            short = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + short)

    layers = [tnn.Conv2d(3, 64, 3, 1, 1, bias=False), tnn.BatchNorm2d(64), tnn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(512, num_classes)]
    return tnn.Sequential(*layers)


def torch_digits_cnn(torch, width=DIGITS_WIDTH):
    """PyTorch twin of ``models.DigitsCNN(attention="cbam")``: same layers and sizes."""
    tnn = torch.nn
    mods = torch_modules(torch)

    class Block(tnn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = tnn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn = tnn.BatchNorm2d(cout)
            self.attn = mods["cbam"](cout, reduction=8)
            self.attn.spatial = mods["sam"](3)

        def forward(self, x):
            return self.attn(torch.relu(self.bn(self.conv(x))))

    return tnn.Sequential(
        Block(1, width),
        tnn.MaxPool2d(2),
        Block(width, 2 * width),
        tnn.AdaptiveAvgPool2d(2),
        tnn.Flatten(),
        tnn.Linear(2 * width * 4, 10),
    )


# ----------------------------------------------------------------------------- attention
def _attention_shape(quick):
    return (16, 64, 16, 16) if quick else (64, 64, 32, 32)


def _mc_attention_module(kind):
    from minicbam import nn

    return {
        "cbam": lambda: nn.CBAM(64),
        "cam": lambda: nn.ChannelAttention(64),
        "sam": lambda: nn.SpatialAttention(7),
        "se": lambda: nn.SqueezeExcitation(64),
    }[kind]().train()


def _register_attention(name, kind, backward):
    def describe(quick):
        what = f"{kind} {'fwd+bwd' if backward else 'fwd'} {_attention_shape(quick)}"
        return what, "img/s", _attention_shape(quick)[0]

    def mine(quick):
        import minicbam as mc

        module = _mc_attention_module(kind)
        x = mc.tensor(_x(_attention_shape(quick)), requires_grad=backward)
        return mc_fwd_bwd(module, x) if backward else mc_fwd(module, x)

    def theirs(torch, quick):
        module = torch_modules(torch)[kind](7 if kind == "sam" else 64).train()
        x = torch.tensor(_x(_attention_shape(quick)), requires_grad=backward)
        return torch_fwd_bwd(module, x) if backward else torch_fwd(torch, module, x)

    register(name, describe, mine, theirs)


_register_attention("cbam_fwd", "cbam", False)
_register_attention("cbam_fwd_bwd", "cbam", True)
_register_attention("cam_fwd_bwd", "cam", True)
_register_attention("sam_fwd_bwd", "sam", True)
_register_attention("se_fwd_bwd", "se", True)


# ----------------------------------------------------------------------------- conv 3x3
def _register_conv(name, channels, hw, backward):
    def shape(quick):
        return (16 if quick else 64, channels, hw, hw)

    def describe(quick):
        n, c, h, w = shape(quick)
        flops = 2 * n * c * c * 9 * h * w * (3 if backward else 1)
        what = f"conv3x3 {c}->{c} {'fwd+bwd' if backward else 'fwd'} {shape(quick)}"
        return what, "GFLOP/s", flops / 1e9

    def mine(quick):
        import minicbam as mc
        from minicbam import nn

        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        x = mc.tensor(_x(shape(quick)), requires_grad=backward)
        return mc_fwd_bwd(conv, x) if backward else mc_fwd(conv, x)

    def theirs(torch, quick):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        x = torch.tensor(_x(shape(quick)), requires_grad=backward)
        return torch_fwd_bwd(conv, x) if backward else torch_fwd(torch, conv, x)

    register(name, describe, mine, theirs)


_register_conv("conv3x3_fwd", 64, 32, False)
_register_conv("conv3x3_fwd_bwd", 64, 32, True)
_register_conv("conv3x3_c128_fwd_bwd", 128, 16, True)
_register_conv("conv3x3_c256_fwd_bwd", 256, 8, True)


# ----------------------------------------------------------------------------- layers
def _register_layer(name, backward=True):
    def describe(quick):
        return f"{name} fwd+bwd {_attention_shape(quick)}", "img/s", _attention_shape(quick)[0]

    def mine(quick):
        import minicbam as mc
        from minicbam import nn

        layer = {"bn": lambda: nn.BatchNorm2d(64), "maxpool": lambda: nn.MaxPool2d(2)}[name]()
        x = mc.tensor(_x(_attention_shape(quick)), requires_grad=True)
        return mc_fwd_bwd(layer.train(), x)

    def theirs(torch, quick):
        tnn = torch.nn
        layer = {"bn": lambda: tnn.BatchNorm2d(64), "maxpool": lambda: tnn.MaxPool2d(2)}[name]()
        x = torch.tensor(_x(_attention_shape(quick)), requires_grad=True)
        return torch_fwd_bwd(layer.train(), x)

    register(f"{name}_fwd_bwd", describe, mine, theirs)


_register_layer("bn")
_register_layer("maxpool")


def _matmul_n(quick):
    return 512 if quick else 1024


def _mc_matmul(quick):
    import minicbam as mc

    n = _matmul_n(quick)
    a, b = mc.tensor(_x((n, n))), mc.tensor(_x((n, n), 1))
    return lambda: a @ b


def _torch_matmul(torch, quick):
    n = _matmul_n(quick)
    a, b = torch.tensor(_x((n, n))), torch.tensor(_x((n, n), 1))
    return lambda: a @ b


def _matmul_describe(quick):
    n = _matmul_n(quick)
    return f"matmul {n}^3 float32", "GFLOP/s", 2 * n**3 / 1e9


register("matmul", _matmul_describe, _mc_matmul, _torch_matmul)


# ----------------------------------------------------------------------------- per-op overhead
# Tiny (4, 4) float32 tensors with requires_grad: the time is the framework's dispatch
# (graph node, allocation, kernel call), not arithmetic. "chain": 50 x (mul, add) = 100 ops.
def _small_describe(ops):
    return lambda quick: (f"{ops} op(s) on (4, 4) fwd+bwd", "calls/s", 1)


def _small_step(a, b, ops, backward):
    def step():
        a.grad = b.grad = None
        y = a + b if ops == 1 else a
        for _ in range(0 if ops == 1 else ops // 2):
            y = y * b + a
        backward(y.sum())

    return step


def _mc_small(ops):
    def build(quick):
        import minicbam as mc

        a, b = (mc.tensor(np.ones((4, 4), np.float32), requires_grad=True) for _ in range(2))
        return _small_step(a, b, ops, lambda loss: loss.backward())

    return build


def _torch_small(ops):
    def build(torch, quick):
        a, b = (torch.ones(4, 4, requires_grad=True) for _ in range(2))
        return _small_step(a, b, ops, lambda loss: loss.backward())

    return build


register("small_add", _small_describe(1), _mc_small(1), _torch_small(1))
register("small_chain100", _small_describe(100), _mc_small(100), _torch_small(100))


# ----------------------------------------------------------------------------- memory
COPY_MIB = 16  # the size of one (64, 64, 32, 32) float32 activation


def _copy_describe(quick):
    mib = 4 if quick else COPY_MIB
    return f"copy {mib} MiB float32 (read + write)", "GB/s", 2 * (mib << 20) / 1e9


def _copy_arrays(quick):
    x = _x(((4 if quick else COPY_MIB) << 20) // 4)
    return x, np.empty_like(x)


def _mc_copy(quick):
    """The machine's copy bandwidth as minicbam's CPU arrays see it (they are NumPy arrays):
    the yardstick for memory-bound rows such as se_fwd_bwd (bytes moved / time)."""
    x, y = _copy_arrays(quick)
    return lambda: np.copyto(y, x)


def _torch_copy(torch, quick):
    x, y = (torch.from_numpy(a) for a in _copy_arrays(quick))
    return lambda: y.copy_(x)


register("copy_16mib", _copy_describe, _mc_copy, _torch_copy)


# ----------------------------------------------------------------------------- models
def _digits_describe(quick):
    return "digits-cnn-cbam train step batch 128", "img/s", 128


def _mc_digits(quick):
    import minicbam as mc
    from minicbam import models, optim

    model = models.DigitsCNN(num_classes=10, attention="cbam", width=DIGITS_WIDTH).train()
    x, y = mc.tensor(_x((128, 1, 8, 8))), mc.tensor(np.arange(128) % 10)
    return mc_train_step(model, optim.Adam(model.parameters(), lr=1e-3), x, y)


def _torch_digits(torch, quick):
    model = torch_digits_cnn(torch).train()
    x, y = torch.tensor(_x((128, 1, 8, 8))), torch.tensor(np.arange(128) % 10)
    return torch_train_step(torch, model, torch.optim.Adam(model.parameters(), 1e-3), x, y)


register("digits_cbam_train", _digits_describe, _mc_digits, _torch_digits)


def _register_resnet(name, train):
    def batch(quick):
        return 16 if quick else 64

    def describe(quick):
        what = f"resnet18-cbam cifar {'train step' if train else 'eval'} batch {batch(quick)}"
        return what, "img/s", batch(quick)

    def mine(quick):
        import minicbam as mc
        from minicbam import models, optim

        model = models.resnet18(num_classes=10, attention="cbam", stem="cifar")
        x = mc.tensor(_x((batch(quick), 3, 32, 32)))
        y = mc.tensor(np.arange(batch(quick)) % 10)
        if not train:
            return mc_fwd(model.eval(), x)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return mc_train_step(model.train(), opt, x, y)

    def theirs(torch, quick):
        model = torch_resnet18_cbam(torch)
        x = torch.tensor(_x((batch(quick), 3, 32, 32)))
        y = torch.tensor(np.arange(batch(quick)) % 10)
        if not train:
            return torch_fwd(torch, model.eval(), x)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return torch_train_step(torch, model.train(), opt, x, y)

    register(name, describe, mine, theirs)


_register_resnet("resnet18_cbam_train", True)
_register_resnet("resnet18_cbam_eval", False)
