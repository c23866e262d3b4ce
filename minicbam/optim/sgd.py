"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

For each parameter p with gradient g (PyTorch's formulas, ``maximize=False``), at step t:

    g   <- g + weight_decay * p                       (if weight_decay != 0)
    b_1  = g                                          (first step: no dampening)
    b_t  = momentum * b_{t-1} + (1 - dampening) * g   (t > 1)
    d    = g + momentum * b_t    if nesterov
           b_t                   otherwise            (if momentum != 0; else d = g)
    p   <- p - lr * d

Nesterov needs ``momentum > 0`` and ``dampening == 0``.
"""

from minicbam.kernels.sgd_update import sgd_update_
from minicbam.optim.optimizer import Optimizer, check_non_negative
from minicbam.tensor import zeros_like


class SGD(Optimizer):
    def __init__(
        self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative("learning rate", group["lr"])
        check_non_negative("momentum value", group["momentum"])
        check_non_negative("weight_decay value", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update_group(self, group):
        # One fused in-place kernel per parameter (minicbam/kernels/sgd_update.py carries the
        # same formulas as this module's docstring).
        for p in group["params"]:
            if p.grad is None:
                continue
            buf, first = None, False
            if group["momentum"] != 0:
                state = self.state.setdefault(p, {})
                first = state.get("momentum_buffer") is None
                if first:  # PyTorch's first step: the buffer is the gradient, undamped
                    state["momentum_buffer"] = zeros_like(p)
                buf = state["momentum_buffer"].data
            sgd_update_(
                p.data,
                p.grad.data,
                buf,
                first,
                group["lr"],
                group["momentum"],
                group["dampening"],
                group["weight_decay"],
                group["nesterov"],
            )
