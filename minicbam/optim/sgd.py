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

from minicbam.optim.optimizer import Optimizer, check_non_negative, clone


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
        for p in group["params"]:
            if p.grad is not None:
                p.data = (p - group["lr"] * self._direction(p, group)).data

    def _direction(self, p, group):
        g = p.grad
        if group["weight_decay"] != 0:
            g = g + group["weight_decay"] * p
        momentum = group["momentum"]
        if momentum == 0:
            return g
        state = self.state.setdefault(p, {})
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = clone(g)  # PyTorch's first step: the buffer is the gradient, undamped
        else:
            buf = momentum * buf + (1 - group["dampening"]) * g
        state["momentum_buffer"] = buf
        return g + momentum * buf if group["nesterov"] else buf
