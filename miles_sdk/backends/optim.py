"""AdamW with optional fp32 master weights for bf16/fp16 parameters.

RL learning rates are tiny (Miles's default is 1e-6): an update that small vanishes when it is added
to a bf16 weight (8 bits of mantissa). With master weights the model computes in bf16 (fast
forward/backward, and the engine decodes from the same live bf16 weights), while AdamW keeps and
updates fp32 copies and writes them back, rounded, after each step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from miles_sdk.config import Config

__all__ = ["PolicyOptimizer", "wants_master_weights"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def wants_master_weights(args: Config, model: nn.Module) -> bool:
    """fp32 master weights for low-precision parameters, unless the user asked for that dtype explicitly."""
    return args.dtype == "auto" and next(model.parameters()).dtype in _LOW_PRECISION


class PolicyOptimizer:
    """AdamW over ``params``, or over fp32 masters of them (``master_weights``)."""

    def __init__(self, args: Config, params: list[nn.Parameter], *, lr: float, master_weights: bool) -> None:
        self.params = params
        self.masters: list[torch.Tensor] | None = None
        if master_weights:
            self.masters = [p.detach().to(torch.float32).clone() for p in params]
        self.optimizer = torch.optim.AdamW(
            self.masters if self.masters is not None else params,
            lr=lr,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_eps,
            weight_decay=args.weight_decay,
        )

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def clip_and_step(self, max_norm: float) -> float:
        """Clip the gradient norm to ``max_norm`` (0 or less: no clipping, as Megatron's
        ``--clip-grad 0``) and step; skip the step on a non-finite norm. Returns the norm before
        clipping."""
        if self.masters is not None:
            for master, p in zip(self.masters, self.params, strict=True):
                master.grad = None if p.grad is None else p.grad.to(torch.float32)
        stepped = self.masters if self.masters is not None else self.params
        grads = [t.grad for t in stepped if t.grad is not None]
        if max_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(stepped, max_norm))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if math.isfinite(grad_norm):
            self.optimizer.step()
            if self.masters is not None:
                with torch.no_grad():
                    for master, p in zip(self.masters, self.params, strict=True):
                        p.copy_(master)
        for t in stepped:
            t.grad = None
        self.zero_grad()
        return grad_norm

    def reset_masters(self) -> None:
        """Set the masters from the (just loaded) parameters."""
        if self.masters is not None:
            with torch.no_grad():
                for master, p in zip(self.masters, self.params, strict=True):
                    master.copy_(p)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.masters is not None:
            state["masters"] = [m.detach().cpu() for m in self.masters]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.masters is not None and "masters" in state:
            with torch.no_grad():
                for master, saved, p in zip(self.masters, state["masters"], self.params, strict=True):
                    master.copy_(saved)
                    p.copy_(master)
