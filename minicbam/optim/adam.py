"""Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay).

For each parameter p with gradient g, at step t = 1, 2, ... (PyTorch's formulas):

    Adam:   g <- g + weight_decay * p                    (if weight_decay != 0)
    AdamW:  p <- p * (1 - lr * weight_decay)             (before the Adam update)

    m_t  = beta1 * m_{t-1} + (1 - beta1) * g             (m_0 = 0)
    v_t  = beta2 * v_{t-1} + (1 - beta2) * g^2           (v_0 = 0)
    vmax_t = max(vmax_{t-1}, v_t)  and use vmax_t for v_t  (amsgrad only)
    denom = sqrt(v_t) / sqrt(1 - beta2^t) + eps
    p   <- p - lr / (1 - beta1^t) * m_t / denom

State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with amsgrad,
``max_exp_avg_sq`` (vmax).
"""

from minicbam.kernels.adam_update import adam_update_
from minicbam.optim.optimizer import Optimizer, check_non_negative
from minicbam.tensor import zeros_like


class Adam(Optimizer):
    # AdamW flips this: weight decay shrinks the parameter instead of joining the gradient.
    decoupled_weight_decay = False

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
        }
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative("learning rate", group["lr"])
        check_non_negative("epsilon value", group["eps"])
        check_non_negative("weight_decay value", group["weight_decay"])
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(
                    f"invalid beta parameter at index {i}: {beta} (need 0 <= beta < 1)"
                )

    def _update_group(self, group):
        # One fused in-place kernel per parameter (minicbam/kernels/adam_update.py carries the same
        # formulas as this module's docstring).
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self._state(p, group)
            state["step"] += 1
            vmax = state.get("max_exp_avg_sq")
            adam_update_(
                p.data,
                p.grad.data,
                state["exp_avg"].data,
                state["exp_avg_sq"].data,
                None if vmax is None else vmax.data,
                state["step"],
                group["lr"],
                group["betas"],
                group["eps"],
                group["weight_decay"],
                self.decoupled_weight_decay,
                group["amsgrad"],
            )

    def _state(self, p, group):
        state = self.state.setdefault(p, {})
        if not state:
            state["step"] = 0
            state["exp_avg"] = zeros_like(p)
            state["exp_avg_sq"] = zeros_like(p)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = zeros_like(p)
        return state


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p <- p (1 - lr wd)``."""

    decoupled_weight_decay = True

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
