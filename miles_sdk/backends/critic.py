"""The PPO critic: a value model (the policy's transformer body plus a scalar head) and its training.

``advantage_estimator=ppo`` needs values for GAE. Like Miles, the critic is a separate model
initialised from the policy (its own copy of the body, so value gradients never touch the actor),
trained with the clipped value loss (``value_clip``) at ``critic_lr`` (default: ``lr``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from miles_sdk._policy import disable_dropout
from miles_sdk.algo import compute_loss, loss_params
from miles_sdk.backends._batching import SequenceRows
from miles_sdk.backends._varlen import attention_implementation, decoder_rows, has_padding, packing_enabled
from miles_sdk.backends.optim import PolicyOptimizer, wants_master_weights
from miles_sdk.config import Config
from miles_sdk.stages import MicroBatch

__all__ = ["Critic"]

log = logging.getLogger(__name__)


class _ValueModel(nn.Module):
    def __init__(self, body: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # start from V = 0: GAE then equals return-to-go
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens: list[list[int]], *, pack: bool) -> SequenceRows:
        """V per token of each sequence."""
        device = self.value_head.weight.device
        hidden = decoder_rows(self.body, tokens, device, pack=pack)
        # A copy, not the squeeze's view: FSDP2 (train_backend="fsdp") warns on a module returning
        # a view, since an in-place op on it would skip its pre-backward hook. [tokens] floats only.
        return hidden.map(lambda h: self.value_head(h.float()).squeeze(-1).clone())


class Critic:
    """Value estimates over response tokens, and clipped value-loss optimizer steps."""

    def __init__(
        self,
        args: Config,
        policy: nn.Module,
        *,
        pack: bool | None = None,
        shard: Callable[[nn.Module], None] | None = None,
        device: torch.device | None = None,
    ) -> None:
        """``pack``: the policy backend's pack_sequences decision (decided here when None).
        ``shard``: called on the value model (body and head) before its optimizer is built: an
        FSDP rank shards it in place there. ``device``: where the critic runs (default: the
        policy's); given when ``policy`` is on the meta device (an FSDP rank that builds empty and
        materialises its shards in ``shard``), where the value model is left to ``shard`` to place."""
        get_decoder = getattr(policy, "get_decoder", None)
        if not callable(get_decoder):
            raise TypeError(
                f"ppo needs a critic built from a transformers causal LM; {type(policy).__name__} "
                "has no get_decoder()"
            )
        body = copy.deepcopy(get_decoder())
        disable_dropout(body, role="critic")
        hidden_size = int(getattr(getattr(policy, "config", None), "hidden_size", 0))
        if hidden_size <= 0:
            raise TypeError("ppo critic: the policy's config has no hidden_size")
        self.args = args
        self.value_params = loss_params(args.replace(loss_type="value_loss"))
        self.device = device if device is not None else next(policy.parameters()).device
        self.model = _ValueModel(body, hidden_size)
        if any(p.is_meta for p in body.parameters()):
            if shard is None:
                raise ValueError(
                    "ppo critic: a policy on the meta device needs a `shard` that materialises it"
                )
        else:
            self.model.to(self.device)
        if shard is not None:
            shard(self.model)
        self.optim = PolicyOptimizer(
            args,
            list(self.model.parameters()),
            lr=args.critic_lr or args.lr,
            master_weights=wants_master_weights(args, body),
        )
        self.pack = packing_enabled(args.pack_sequences, body, self.device) if pack is None else pack
        if self.pack and args.pack_sequences == "auto" and next(body.parameters()).dtype == torch.float32:
            # The critic runs without autocast, and fp32 has no flash varlen kernel: the
            # per-sequence attention loop would cost more than the padding it saves.
            log.info("pack_sequences auto: the fp32 critic pads")
            self.pack = False

    def values(self, tokens: list[list[int]], response_lengths: list[int]) -> list[torch.Tensor]:
        """V(s_t) for each response token t (the state before t is generated), per sample."""
        return list(torch.split(self._flat_values(tokens, response_lengths), response_lengths))

    def _flat_values(self, tokens: list[list[int]], response_lengths: list[int]) -> torch.Tensor:
        values: SequenceRows = self.model(tokens, pack=self.pack and has_padding(tokens))
        return values.all_scoring_rows([len(seq) for seq in tokens], response_lengths)

    def train_scope(self, batch: MicroBatch) -> contextlib.AbstractContextManager[None]:
        """Held over a micro-batch's forward and backward (see TorchBackend._train_scope)."""
        if self.pack and has_padding(batch.token_lists):
            return attention_implementation(self.model.body)
        return contextlib.nullcontext()

    @torch.no_grad()
    def compute(self, tokens: list[list[int]], response_lengths: list[int]) -> list[torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # old values only: no activations kept for a backward
                flat = self._flat_values(tokens, response_lengths).float().cpu()  # one device-to-host copy
                return list(torch.split(flat, response_lengths))
        finally:
            self.model.train(was_training)

    def micro_batch_loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        current = self.values(batch.token_lists, batch.response_lengths)
        return compute_loss(batch, [], None, current, params=self.value_params)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
