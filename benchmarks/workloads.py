"""The benchmark workloads: each builds a minicbam callable and, when torch is given, the
same computation (same shapes and structure) in PyTorch.

Shapes follow the issue's anchors: attention modules and ops on (64, 64, 32, 32) float32;
ResNet18-CBAM (CIFAR stem) train step / evaluation at batch 64 on 32x32; the digits CNN
with CBAM train step at batch 128 on 8x8.
"""

import collections

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import models, nn, optim

Case = collections.namedtuple("Case", "what unit per_call minicbam torch")


def import_torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _fwd_bwd(module, x):
    def step():
        module.zero_grad()
        x.grad = None
        module(x).sum().backward()

    return step


def _fwd(module, x):
    def step():
        with mc.no_grad():
            module(x)

    return step


def _torch_fwd_bwd(torch, module, x):
    def step():
        module.zero_grad()
        x.grad = None
        module(x).sum().backward()

    return step


def _torch_fwd(torch, module, x):
    def step():
        with torch.no_grad():
            module(x)

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


# ----------------------------------------------------------------------------- cases
def _attention_case(kind, backward, quick, torch):
    shape = (16, 64, 16, 16) if quick else (64, 64, 32, 32)
    module = {
        "cbam": lambda: nn.CBAM(64),
        "cam": lambda: nn.ChannelAttention(64),
        "sam": lambda: nn.SpatialAttention(7),
        "se": lambda: nn.SqueezeExcitation(64),
    }[kind]().train()
    x = mc.tensor(_x(shape), requires_grad=backward)
    mine = _fwd_bwd(module, x) if backward else _fwd(module, x)
    theirs = None
    if torch is not None:
        tm = torch_modules(torch)[kind](64) if kind != "sam" else torch_modules(torch)["sam"](7)
        tx = torch.tensor(_x(shape), requires_grad=backward)
        theirs = _torch_fwd_bwd(torch, tm, tx) if backward else _torch_fwd(torch, tm, tx)
    what = f"{kind} {'fwd+bwd' if backward else 'fwd'} {shape}"
    return Case(what, "img/s", shape[0], mine, theirs)


def _conv_case(backward, quick, torch):
    shape = (16, 64, 32, 32) if quick else (64, 64, 32, 32)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = mc.tensor(_x(shape), requires_grad=backward)
    mine = _fwd_bwd(conv, x) if backward else _fwd(conv, x)
    theirs = None
    if torch is not None:
        tconv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
        tx = torch.tensor(_x(shape), requires_grad=backward)
        theirs = _torch_fwd_bwd(torch, tconv, tx) if backward else _torch_fwd(torch, tconv, tx)
    flops = 2 * shape[0] * 64 * 64 * 9 * shape[2] * shape[3] * (3 if backward else 1)
    return Case(
        f"conv3x3 64->64 {'fwd+bwd' if backward else 'fwd'} {shape}",
        "GFLOP/s",
        flops / 1e9,
        mine,
        theirs,
    )


def _layer_case(name, quick, torch):
    shape = (16, 64, 32, 32) if quick else (64, 64, 32, 32)
    mine_layer = {"bn": nn.BatchNorm2d(64), "maxpool": nn.MaxPool2d(2)}[name].train()
    x = mc.tensor(_x(shape), requires_grad=True)
    theirs = None
    if torch is not None:
        tl = {"bn": torch.nn.BatchNorm2d(64), "maxpool": torch.nn.MaxPool2d(2)}[name].train()
        theirs = _torch_fwd_bwd(torch, tl, torch.tensor(_x(shape), requires_grad=True))
    return Case(f"{name} fwd+bwd {shape}", "img/s", shape[0], _fwd_bwd(mine_layer, x), theirs)


def _train_step(model, opt, x, y):
    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _torch_train_step(torch, model, opt, x, y):
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _resnet_case(train, quick, torch):
    batch = 16 if quick else 64
    model = models.resnet18(num_classes=10, attention="cbam", stem="cifar")
    x = mc.tensor(_x((batch, 3, 32, 32)))
    y = mc.tensor(np.arange(batch) % 10)
    if train:
        mine = _train_step(
            model.train(), optim.SGD(model.parameters(), lr=0.01, momentum=0.9), x, y
        )
    else:
        mine = _fwd(model.eval(), x)
    theirs = None
    if torch is not None:
        tm = torch_resnet18_cbam(torch)
        tx, ty = torch.tensor(_x((batch, 3, 32, 32))), torch.tensor(np.arange(batch) % 10)
        if train:
            topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
            theirs = _torch_train_step(torch, tm.train(), topt, tx, ty)
        else:
            theirs = _torch_fwd(torch, tm.eval(), tx)
    what = f"resnet18-cbam cifar {'train step' if train else 'eval'} batch {batch}"
    return Case(what, "img/s", batch, mine, theirs)


def _digits_case(quick, torch):
    batch = 128
    model = models.DigitsCNN(num_classes=10, attention="cbam").train()
    x, y = mc.tensor(_x((batch, 1, 8, 8))), mc.tensor(np.arange(batch) % 10)
    mine = _train_step(model, optim.Adam(model.parameters(), lr=1e-3), x, y)
    theirs = None
    if torch is not None:
        tm = torch_digits_like(torch, model)
        tx, ty = torch.tensor(_x((batch, 1, 8, 8))), torch.tensor(np.arange(batch) % 10)
        theirs = _torch_train_step(
            torch, tm.train(), torch.optim.Adam(tm.parameters(), 1e-3), tx, ty
        )
    return Case(f"digits-cnn-cbam train step batch {batch}", "img/s", batch, mine, theirs)


def torch_digits_like(torch, model):
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

    width = model.block1.conv.weight.shape[0]
    return tnn.Sequential(
        Block(1, width),
        tnn.MaxPool2d(2),
        Block(width, 2 * width),
        tnn.AdaptiveAvgPool2d(2),
        tnn.Flatten(),
        tnn.Linear(2 * width * 4, 10),
    )


def _matmul_case(quick, torch):
    n = 512 if quick else 1024
    a, b = mc.tensor(_x((n, n))), mc.tensor(_x((n, n), 1))

    def mine():
        a @ b

    theirs = None
    if torch is not None:
        ta, tb = torch.tensor(_x((n, n))), torch.tensor(_x((n, n), 1))

        def theirs():
            ta @ tb

    return Case(f"matmul {n}^3 float32", "GFLOP/s", 2 * n**3 / 1e9, mine, theirs)


CASES = {
    "cbam_fwd": lambda quick, torch: _attention_case("cbam", False, quick, torch),
    "cbam_fwd_bwd": lambda quick, torch: _attention_case("cbam", True, quick, torch),
    "cam_fwd_bwd": lambda quick, torch: _attention_case("cam", True, quick, torch),
    "sam_fwd_bwd": lambda quick, torch: _attention_case("sam", True, quick, torch),
    "se_fwd_bwd": lambda quick, torch: _attention_case("se", True, quick, torch),
    "conv3x3_fwd": lambda quick, torch: _conv_case(False, quick, torch),
    "conv3x3_fwd_bwd": lambda quick, torch: _conv_case(True, quick, torch),
    "bn_fwd_bwd": lambda quick, torch: _layer_case("bn", quick, torch),
    "maxpool_fwd_bwd": lambda quick, torch: _layer_case("maxpool", quick, torch),
    "matmul": lambda quick, torch: _matmul_case(quick, torch),
    "digits_cbam_train": lambda quick, torch: _digits_case(quick, torch),
    "resnet18_cbam_train": lambda quick, torch: _resnet_case(True, quick, torch),
    "resnet18_cbam_eval": lambda quick, torch: _resnet_case(False, quick, torch),
}
