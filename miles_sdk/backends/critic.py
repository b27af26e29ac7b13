"""The PPO critic: a value model (the policy's transformer body plus a scalar head) and its training.

``advantage_estimator=ppo`` needs values for GAE. Like Miles, the critic is a separate model
initialised from the policy (its own copy of the body, so value gradients never touch the actor),
trained with the clipped value loss (``value_clip``) at ``critic_lr`` (default: ``lr``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from miles_sdk.algo import compute_loss
from miles_sdk.backends._batching import pad_tokens
from miles_sdk.backends.optim import PolicyOptimizer, wants_master_weights
from miles_sdk.config import Config

__all__ = ["Critic"]


class _ValueModel(nn.Module):
    def __init__(self, body: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # start from V = 0: GAE then equals return-to-go
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        out: torch.Tensor = self.value_head(hidden.float()).squeeze(-1)
        return out


class Critic:
    """Value estimates over response tokens, and clipped value-loss optimizer steps."""

    def __init__(self, args: Config, policy: nn.Module) -> None:
        get_decoder = getattr(policy, "get_decoder", None)
        if not callable(get_decoder):
            raise TypeError(
                f"ppo needs a critic built from a transformers causal LM; {type(policy).__name__} "
                "has no get_decoder()"
            )
        body = copy.deepcopy(get_decoder())
        hidden_size = int(getattr(getattr(policy, "config", None), "hidden_size", 0))
        if hidden_size <= 0:
            raise TypeError("ppo critic: the policy's config has no hidden_size")
        self.args = args
        self.value_args = args.replace(loss_type="value_loss")
        self.device = next(policy.parameters()).device
        self.model = _ValueModel(body, hidden_size).to(self.device)
        self.optim = PolicyOptimizer(
            args,
            list(self.model.parameters()),
            lr=args.critic_lr or args.lr,
            master_weights=wants_master_weights(args, body),
        )

    def values(self, tokens: list[list[int]], response_lengths: list[int]) -> list[torch.Tensor]:
        """V(s_t) for each response token t (the state before t is generated), per sample."""
        input_ids, attention_mask = pad_tokens(tokens, self.device)
        out = self.model(input_ids, attention_mask)
        return [
            out[i, len(seq) - r - 1 : len(seq) - 1]
            for i, (seq, r) in enumerate(zip(tokens, response_lengths))
        ]

    @torch.no_grad()
    def compute(self, tokens: list[list[int]], response_lengths: list[int]) -> list[torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # old values only: no activations kept for a backward
                return [v.float().cpu() for v in self.values(tokens, response_lengths)]
        finally:
            self.model.train(was_training)

    def micro_batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        current = self.values(batch["unconcat_tokens_list"], batch["response_lengths"])
        return compute_loss(self.value_args, batch, [], None, current)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
