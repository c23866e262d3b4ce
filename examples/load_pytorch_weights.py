"""Load CBAM weights saved by PyTorch into minicbam, without PyTorch.

The official CBAM code (Jongchan/attention-module) names its parameters differently from
minicbam (``ChannelGate.mlp.1.weight`` vs ``channel.mlp.0.weight``) and feeds its spatial conv
[max, mean] instead of [mean, max]. ``minicbam.io.interop.from_official`` renames the keys and
swaps the conv's input channels; ``mc.load`` reads ``.pth`` files without importing torch (a
restricted unpickler: only tensors and plain containers, never arbitrary code).

Part 1, a single CBAM module: if PyTorch is installed, build the official module in PyTorch,
save its weights with ``torch.save`` and its output on a fixed input, then load them into
``minicbam.nn.CBAM.official`` and compare outputs. Without PyTorch (or with --no-torch), an
official-layout file is written from NumPy (``.safetensors``) and loaded the same way.

Part 2, a whole ResNet-18 with CBAM: a DataParallel-style checkpoint (``{"state_dict":
{"module.layer1.0.cbam.ChannelGate...": ...}}``) converted back into a fresh minicbam model.

    python examples/load_pytorch_weights.py [--no-torch] [--dir DIR]
"""

import argparse
import os
import tempfile

import numpy as np

import minicbam as mc
from minicbam import interop, nn
from minicbam.models import resnet18

CHANNELS, REDUCTION = 32, 16


# ------------------------------------------------------------- the PyTorch side (optional)


def save_official_cbam_with_torch(path, x):
    """The official CBAM in PyTorch (structure as in its MODELS/cbam.py), random weights,
    saved with torch.save; returns its output on ``x``."""
    import torch
    import torch.nn.functional as tf
    from torch import nn as tnn

    class ChannelGate(tnn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.mlp = tnn.Sequential(
                tnn.Flatten(), tnn.Linear(c, c // r), tnn.ReLU(), tnn.Linear(c // r, c)
            )

        def forward(self, x):
            window = x.shape[2:]
            att = self.mlp(tf.avg_pool2d(x, window)) + self.mlp(tf.max_pool2d(x, window))
            return x * torch.sigmoid(att)[:, :, None, None]

    class BasicConv(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(2, 1, 7, padding=3, bias=False)
            self.bn = tnn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    class SpatialGate(tnn.Module):
        def __init__(self):
            super().__init__()
            self.spatial = BasicConv()

        def forward(self, x):
            pooled = torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), 1)  # MAX first
            return x * torch.sigmoid(self.spatial.bn(self.spatial.conv(pooled)))

    class CBAM(tnn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.ChannelGate, self.SpatialGate = ChannelGate(c, r), SpatialGate()

        def forward(self, x):
            return self.SpatialGate(self.ChannelGate(x))

    torch.manual_seed(0)
    module = CBAM(CHANNELS, REDUCTION)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is really tested
        module.SpatialGate.spatial.bn.running_mean.fill_(0.3)
        module.SpatialGate.spatial.bn.running_var.fill_(2.0)
        module.SpatialGate.spatial.bn.weight.fill_(1.5)
    module.eval()
    torch.save(module.state_dict(), path)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def save_official_cbam_without_torch(path):
    """The same key names and shapes as the PyTorch file, written from NumPy."""
    source = nn.CBAM.official(CHANNELS, REDUCTION)
    mc.save(interop.to_official(source.state_dict()), path)


# ------------------------------------------------------------------ the minicbam side


def load_cbam(path, x, expected):
    state = mc.load(path)  # a dict of NumPy arrays; torch is not imported
    print(f"{os.path.basename(path)}: {len(state)} tensors, e.g. {sorted(state)[:3]}")
    module = nn.CBAM.official(CHANNELS, REDUCTION)
    module.load_state_dict(interop.from_official(state))
    y = module.eval()(mc.tensor(x)).numpy()
    if expected is not None:
        print(f"minicbam vs PyTorch output: max |difference| = {np.abs(y - expected).max():.1e}")
    else:
        print(f"loaded; output shape {y.shape}")


def resnet_round_trip(directory, use_torch):
    mc.manual_seed(0)
    model = resnet18(
        num_classes=10, attention="cbam", attention_variant="official", stem="cifar", width=8
    ).eval()
    official = {"module." + k: v for k, v in interop.to_official(model.state_dict()).items()}
    if use_torch:
        import torch

        path = os.path.join(directory, "resnet18_cbam.pth.tar")
        checkpoint = {k: torch.from_numpy(np.array(v)) for k, v in official.items()}
        torch.save({"epoch": 1, "arch": "resnet18", "state_dict": checkpoint}, path)
    else:
        path = os.path.join(directory, "resnet18_cbam.safetensors")
        mc.save(official, path)
    fresh = resnet18(
        num_classes=10, attention="cbam", attention_variant="official", stem="cifar", width=8
    )
    fresh.load_state_dict(interop.from_official(mc.load(path)))  # takes ["state_dict"] itself
    x = mc.randn(2, 3, 32, 32)
    diff = np.abs(fresh.eval()(x).numpy() - model(x).numpy()).max()
    print(f"{os.path.basename(path)} -> fresh resnet18+CBAM: max |output difference| {diff:.1e}")


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="do not use PyTorch at all")
    parser.add_argument("--dir", help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()
    use_torch = not args.no_torch and torch_available()
    print("PyTorch writes the files" if use_torch else "NumPy writes the files (no PyTorch)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        os.makedirs(directory, exist_ok=True)
        x = np.random.default_rng(0).standard_normal((2, CHANNELS, 7, 7)).astype(np.float32)
        if use_torch:
            path = os.path.join(directory, "cbam_official.pth")
            expected = save_official_cbam_with_torch(path, x)
        else:
            path = os.path.join(directory, "cbam_official.safetensors")
            expected = save_official_cbam_without_torch(path)
        load_cbam(path, x, expected)
        resnet_round_trip(directory, use_torch)


if __name__ == "__main__":
    main()
