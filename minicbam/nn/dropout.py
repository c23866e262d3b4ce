"""``Dropout``: zero each element with probability p in training, scale the rest by 1/(1-p).

Masks come from minicbam's generator (``mc.manual_seed``); in eval mode it is the identity.
"""

from minicbam.nn import functional as F
from minicbam.nn.module import Module


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
