"""Input and output: ``mc.save``/``mc.load`` (safetensors, npz, PyTorch .pth through a
restricted unpickler) and the converters for weights in other implementations' layouts."""
