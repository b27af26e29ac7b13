"""What the training backend needs from a LoRA adapter, without importing peft."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import torch

__all__ = ["TrainableAdapter"]


class TrainableAdapter(Protocol):
    """The adapter of a policy whose base weights are frozen (:class:`miles_sdk.lora.LoraPolicy`)."""

    def reference(self) -> AbstractContextManager[object]:
        """Held over the reference model's forward: the policy with its adapters off (the base)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights alone (what a checkpoint holds for the model)."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`; the engine's merged weights follow."""
        ...
