"""Moving a tensor between devices: y = x on another device; gx = gy moved back."""

from minicbam import device
from minicbam.function import Function


class Move(Function):
    saves_tensors = False

    def __init__(self, target):
        self.target = target

    def forward(self, x):
        self.source = device.device_of(x)
        return device.to_device(x, self.target)

    def backward(self, gy):
        return (device.to_device(gy, self.source),)


def move(x, target):
    return x if x.device == target else Move(target)(x)
