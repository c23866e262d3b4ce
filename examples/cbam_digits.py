"""CBAM from scratch: channel and spatial attention in a few lines, trained on 8x8 digits.

CBAM (Woo et al., ECCV 2018) refines a feature map F of shape (N, C, H, W) twice:

    channel:  M_c = sigmoid(MLP(avgpool(F)) + MLP(maxpool(F)))     (N, C, 1, 1)    F'  = M_c * F
    spatial:  M_s = sigmoid(conv([mean_c F'; max_c F']))           (N, 1, H, W)    F'' = M_s * F'

The channel gate asks "which feature detectors matter for this image?", the spatial gate
"where in the image?". Below, both gates are written with plain tensor ops (no nn.CBAM),
checked against minicbam's built-in ``nn.CBAM.paper`` (the same equations), put into a small
CNN and trained on scikit-learn's digits.

    python examples/cbam_digits.py [--epochs 8] [--limit N]
"""

import argparse
import time

import numpy as np

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import nn, optim
from minicbam.data import DataLoader, Digits, Subset


class ChannelGate(nn.Module):
    def __init__(self, channels, reduction=8):
        super().__init__()
        hidden = max(1, channels // reduction)
        # One MLP shared by both pooled descriptors (the paper's Eq. 2 has no biases).
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=False),
        )

    def forward(self, x):
        n, c = x.shape[:2]
        avg = self.mlp(x.mean((2, 3)))  # (N, C): average over all positions
        peak = self.mlp(x.amax((2, 3)))  # (N, C): strongest response anywhere
        return x * (avg + peak).sigmoid().reshape(n, c, 1, 1)


class SpatialGate(nn.Module):
    def __init__(self, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        pooled = mc.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # (N, 2, H, W)
        return x * self.conv(pooled).sigmoid()  # (N, 1, H, W) broadcast over channels


class CBAM(nn.Module):
    def __init__(self, channels, reduction=8, kernel_size=3):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x):
        return self.spatial(self.channel(x))


class Net(nn.Module):
    """conv-BN-ReLU-CBAM, 2x2 max-pool, conv-BN-ReLU-CBAM, global average pool, linear."""

    def __init__(self, width=32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            CBAM(width),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            CBAM(2 * width),
        )
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def check_against_builtin():
    """Our CBAM and nn.CBAM.paper share key names, so the same weights give the same output."""
    ours, builtin = CBAM(16), nn.CBAM.paper(16, reduction=8, kernel_size=3)
    builtin.load_state_dict(ours.state_dict())
    x = mc.randn(2, 16, 5, 5)
    diff = np.abs(ours(x).numpy() - builtin(x).numpy()).max()
    print(f"from-scratch CBAM vs nn.CBAM.paper: max |difference| = {diff:.1e}")


def accuracy(model, loader):
    model.eval()
    correct = total = 0
    with mc.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1).numpy() == y.numpy()).sum())
            total += len(y)
    return correct / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N samples only")
    args = parser.parse_args()

    mc.manual_seed(0)
    check_against_builtin()
    train, test = Digits("train"), Digits("test")
    if args.limit:
        train = Subset(train, list(range(args.limit)))
    train_loader = DataLoader(train, batch_size=64, shuffle=True, seed=0)
    test_loader = DataLoader(test, batch_size=256)

    model = Net()
    optimizer = optim.Adam(model.parameters(), lr=3e-3)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        print(
            f"epoch {epoch + 1}: last batch loss {loss.item():.3f}, test accuracy "
            f"{accuracy(model, test_loader):.1%} ({time.perf_counter() - start:.1f}s)"
        )


if __name__ == "__main__":
    main()
