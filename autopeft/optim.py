"""AdamW that moves only the parts of each tensor a step used: the supernet's optimizer.

A supernet step trains a subnet, i.e. leading slices of shared tensors. With plain AdamW the
slices the step did not use still move (their first moment is not zero) and decay. Here each
step takes a boolean mask per parameter; outside it the parameter, both moments and the step
count stay bit for bit as they were, and inside it the update is AdamW's (decoupled weight decay,
bias correction by the element's own step count), so an element trained in every step follows
``torch.optim.AdamW`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

Masks = dict[nn.Parameter, torch.Tensor]  # parameter -> bool mask of the elements a step may move


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW over masked elements; ``active()`` gives the masks of the step being taken (a parameter
    missing from them, with a gradient, is moved whole; one without a gradient is left alone)."""

    def __init__(
        self,
        params: Iterable,
        active: Callable[[], Masks],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.active = active

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        masks = self.active()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                mask = masks.get(param)
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros_like(param)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                keep = torch.ones_like(param, dtype=torch.bool) if mask is None else mask
                self._update(param, param.grad, state, keep, group, beta1, beta2)

    @staticmethod
    def _update(param, grad, state, keep, group, beta1, beta2) -> None:
        lr = group["lr"]
        step = torch.where(keep, state["step"] + 1, state["step"])
        exp_avg = torch.where(keep, state["exp_avg"].lerp(grad, 1 - beta1), state["exp_avg"])
        exp_avg_sq = torch.where(keep, state["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2), state["exp_avg_sq"])
        steps = step.clamp(min=1)  # untouched elements: any finite value, discarded below
        denom = exp_avg_sq.sqrt() / (1 - beta2**steps).sqrt() + group["eps"]
        moved = param * (1 - lr * group["weight_decay"]) - (lr / (1 - beta1**steps)) * exp_avg / denom
        param.copy_(torch.where(keep, moved, param))
        state["step"], state["exp_avg"], state["exp_avg_sq"] = step, exp_avg, exp_avg_sq
