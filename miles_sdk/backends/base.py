"""The training-backend interface: log-probs, optimizer steps, checkpoint state, weights for the engine."""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch

from miles_sdk.stages import TrainBatch
from miles_sdk.types import Metrics, TrainData

__all__ = ["LogProbModel", "TrainBackend"]

LogProbModel = Literal["actor", "ref"]


class TrainBackend(Protocol):
    """What the Trainer needs from a training backend (torch, Megatron)."""

    @property
    def model(self) -> torch.nn.Module:
        """The live policy module (the embedded engine reads its weights when colocated)."""
        ...

    def compute_log_probs(self, data: TrainData, *, which: LogProbModel) -> list[torch.Tensor]:
        """Per-sample log-probs of the response tokens under the actor or the reference model.
        Each tensor has ``response_lengths[i]`` entries (float32, on CPU)."""
        ...

    def compute_values(self, data: TrainData) -> list[torch.Tensor] | None:
        """Per-sample critic values over response tokens, or None without a critic."""
        ...

    def train(self, rollout_id: int, batch: TrainBatch) -> Metrics:
        """Run the optimizer steps of one rollout over ``batch``; return averaged metrics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and scheduler state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
