"""``Parameter``: a leaf tensor that a ``Module`` registers as one of its learnable weights.

Assigning a ``Parameter`` to a module attribute is what puts it in ``parameters()`` and
``state_dict()``; a plain ``Tensor`` assigned the same way stays an ordinary attribute.
As in PyTorch, wrapping a tensor shares its array instead of copying it.
"""

import numpy as np

from minicbam import device
from minicbam.tensor import Tensor, float32


class Parameter(Tensor):
    """``Parameter(data=None, requires_grad=True)``: ``data`` is a Tensor or an array."""

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            array = device.empty((0,), float32, device.CPU)
        elif isinstance(data, Tensor):
            array = data.data
        elif isinstance(data, np.ndarray):
            array = np.ascontiguousarray(data)  # the Tensor invariant: C-contiguous data
        elif hasattr(data, "copy_to_host"):  # a numba CUDA device array
            array = data
        else:
            raise TypeError(
                f"Parameter: data must be a Tensor or an array, got {type(data).__name__}"
            )
        super().__init__(array, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()
