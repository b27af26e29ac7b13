"""The inference-engine interface every engine implements: embedded torch, SGLang, HTTP, scripted.

Sampling parameters use SGLang's /generate vocabulary (the dict Miles passes to a custom generate
function), so a Miles ``sampling_params`` dict works unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, TypedDict, runtime_checkable

import attrs

__all__ = [
    "EngineOutput",
    "FinishReason",
    "InferenceEngine",
    "RemoteWeightsEngine",
    "ReplicaWeights",
    "SamplingParams",
    "WeightReporter",
]


class SamplingParams(TypedDict, total=False):
    """SGLang-style sampling parameters. Unset keys take the engine's defaults."""

    temperature: float
    """0 means greedy."""
    top_p: float
    top_k: int
    """-1 disables top-k."""
    max_new_tokens: int
    stop: list[str]
    """Stop strings; the stop string is kept in the output (SGLang's no_stop_trim=True)."""
    stop_token_ids: list[int]
    """Extra stop token ids, besides the tokenizer's EOS."""
    ignore_eos: bool
    sampling_seed: int
    """Per-request seed: the same seed and weights give the same tokens."""
    skip_special_tokens: bool
    no_stop_trim: bool


class FinishReason(str, enum.Enum):
    """Why generation ended: a stop condition, the token budget, or an abort."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@attrs.frozen
class EngineOutput:
    """The result of one generate request."""

    token_ids: list[int]
    """The new tokens only (no prompt)."""
    log_probs: list[float]
    """Log-prob of each new token under the sampling distribution's logits (before temperature
    is applied to sampling, i.e. log_softmax(logits / temperature))."""
    finish_reason: FinishReason
    weight_version: int
    """The engine weight version that produced these tokens."""
    text: str | None = None
    """Decoded new text when the engine has a tokenizer."""
    finish_message: str | None = None
    """Why the engine finished, when it says more than the reason (SGLang's
    ``meta_info.finish_reason.message``): e.g. an ABORT for a prompt longer than the context."""


@runtime_checkable
class InferenceEngine(Protocol):
    """Generates continuations of token ids. All methods are safe to call concurrently."""

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        """Continue ``input_ids``. An abort makes in-flight requests return with ABORT and
        whatever tokens they had produced."""
        ...

    async def abort_all(self) -> None:
        """Abort every in-flight request; they return promptly with FinishReason.ABORT."""
        ...

    def update_weights(self, version: int | None = None) -> None:
        """Make the engine sample from the trainer's current weights; bumps ``weight_version``."""
        ...

    @property
    def weight_version(self) -> int:
        """Monotonic version of the weights the engine samples from."""
        ...


@attrs.frozen
class ReplicaWeights:
    """Which weights one engine replica holds: its version and the first rows of a few tensors."""

    replica: str
    """The replica's name (a URL, or the engine's class)."""
    weight_version: int
    values: dict[str, list[float]]
    """Parameter name -> its first rows, flattened (SGLang's ``get_weights_by_name``)."""


@runtime_checkable
class WeightReporter(Protocol):
    """An engine that can say which weights it samples from (the Trainer's sync check)."""

    async def report_weights(self, names: Sequence[str], truncate_size: int) -> list[ReplicaWeights]:
        """One entry per replica: its weight version and the first ``truncate_size`` rows of
        each parameter in ``names``."""
        ...


@runtime_checkable
class RemoteWeightsEngine(Protocol):
    """An engine (or router) whose replicas may hold their own copy of the weights in another
    process: the Trainer's sync writes the weights to a directory and calls
    :meth:`load_weights_from_disk` instead of :meth:`InferenceEngine.update_weights`."""

    @property
    def remote_weights(self) -> bool:
        """True when some replica does not read the trainer's weights in this process."""
        ...

    async def load_weights_from_disk(self, model_path: str, version: int) -> None:
        """Make every replica load ``model_path`` (a ``save_pretrained`` directory) and publish
        it as ``version``; in-process replicas just take the version."""
        ...
