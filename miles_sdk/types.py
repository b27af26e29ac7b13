"""The RL vocabulary shared by every stage of the loop: samples, rollout outputs, train data.

`Sample` mirrors Miles's `miles.utils.types.Sample` field for field, so hook code written for Miles
reads and writes the same attributes here.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NotRequired, Protocol, TypeAlias, TypedDict, overload

import torch

__all__ = [
    "ChatMessage",
    "DynamicFilterOutput",
    "EvalDatasetResult",
    "Label",
    "Metrics",
    "Prompt",
    "RewardSpec",
    "RewardValue",
    "RolloutFnEvalOutput",
    "RolloutFnTrainOutput",
    "Sample",
    "SampleStatus",
    "SampleValidationError",
    "TrainData",
]

Metrics: TypeAlias = dict[str, float]
"""Flat metric name -> value, e.g. ``{"rollout/reward_mean": 0.4}``."""

ChatMessage: TypeAlias = dict[str, Any]
"""One chat message, ``{"role": ..., "content": ...}`` plus whatever a chat template reads."""

Prompt: TypeAlias = str | list[ChatMessage]
"""A raw prompt string, or chat messages rendered later through the tokenizer's chat template."""

Label: TypeAlias = str | int | float | dict[str, Any] | list[Any]
"""A ground truth as the data holds it, kept raw as Miles keeps it: text, a number (gpqa reads an
int as an option index), or a dict / list (answer aliases, test cases)."""

RewardValue: TypeAlias = float | dict[str, Any]
"""A scalar reward, or a dict of scores read through ``Config.reward_key`` (dapo returns one)."""


@dataclass(frozen=True)
class RewardSpec:
    """Miles's per-sample reward choice: ``rm_type`` (and, for Miles's ``async_rm``, a
    ``custom_rm_path``) that win over ``metadata["rm_type"]`` and ``Config.rm_type`` when set."""

    rm_type: str | None = None
    custom_rm_path: str | None = None


class SampleValidationError(ValueError):
    """A Sample whose per-token lists disagree with its ``response_length``."""


class _Status(str, enum.Enum):
    """Lifecycle of a sample. The engine's finish reason maps onto it:
    ``length -> TRUNCATED``, ``abort -> ABORTED``, ``stop -> COMPLETED``."""

    PENDING = "pending"
    COMPLETED = "completed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"
    FAILED = "failed"


SampleStatus: TypeAlias = _Status
"""``Sample.Status`` usable in annotations (mypy rejects a class attribute alias as a type)."""


class _HasRewardKey(Protocol):
    """An ``args`` object (the Config) as ``Sample.get_reward_value(args)`` reads it."""

    @property
    def reward_key(self) -> str | None: ...


class _HasSpecialTokens(Protocol):
    """A tokenizer as ``Sample.response_text`` reads it (any transformers tokenizer)."""

    @property
    def all_special_tokens(self) -> list[str]: ...


_GENERIC_SPECIAL_TOKENS = re.compile(r"<\|[^<>|\s]*\|>|</?s>|<eos>|<pad>|<end_of_turn>")
"""End/padding markers of common chat models, for ``response_text`` without a tokenizer."""


def _rollout_tokenizer() -> _HasSpecialTokens | None:
    """The tokenizer of the rollout running in this context, if any (reward functions run in one)."""
    from miles_sdk.rollout.context import _CURRENT  # here: rollout/ imports this module

    ctx = _CURRENT.get()
    tokenizer = getattr(ctx, "tokenizer", None)
    return tokenizer if hasattr(tokenizer, "all_special_tokens") else None


@dataclass
class Sample:
    """One response to one prompt, as it moves through generate -> score -> filter -> train.

    Mutable on purpose: hooks (generate, reward, filters) fill it in place, as in Miles.
    """

    Status = _Status

    group_index: int | None = None
    """Which prompt group this sample belongs to (all n samples of a prompt share it)."""
    index: int | None = None
    """Global, monotonically increasing sample id."""
    rollout_id: int | None = None
    """The rollout step that produced this sample."""
    prompt: Prompt = ""
    """The prompt as given by the dataset: text, or chat messages."""
    tokens: list[int] = field(default_factory=list)
    """Prompt token ids followed by response token ids."""
    multimodal_inputs: dict[str, Any] | None = None
    """Raw multimodal inputs (images, ...) for the inference engine."""
    multimodal_train_inputs: dict[str, Any] | None = None
    """Processed multimodal tensors for the trainer."""
    response: str = ""
    """Decoded response text."""
    response_length: int = 0
    """Number of response tokens at the end of ``tokens``."""
    label: Label | None = None
    """Ground truth used by the reward, as the data holds it (not converted to text)."""
    reward: RewardValue | None = None
    """Scalar reward or a dict read through ``reward_key``; None until scored."""
    loss_mask: list[int] | None = None
    """Per response token: 1 trains on the token, 0 ignores it (tool output). None means all ones."""
    weight_versions: list[int] = field(default_factory=list)
    """The engine weight version of each generate call that produced part of the response."""
    rollout_log_probs: list[float] | None = None
    """Per response token log-prob under the inference engine."""
    rollout_routed_experts: list[Any] | None = None
    """MoE routing decisions recorded by the engine (routing replay)."""
    teacher_log_probs: list[float] | torch.Tensor | None = None
    """Per response token log-probs of a teacher model (on-policy distillation); Miles's OPD
    post-process stores a 1-D tensor here."""
    remove_sample: bool = False
    """Excluded from the loss (loss mask zeroed) but kept in reward normalisation."""
    status: _Status = _Status.PENDING
    """Where the sample is in its lifecycle."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Per-row metadata from the dataset (``metadata_key``), e.g. ``rm_type``, tools."""
    train_metadata: dict[str, Any] | None = None
    """Extra per-sample data forwarded to the trainer."""
    generate_function_path: str | None = None
    """Per-sample override of the generate function (``pkg.module.attr``)."""
    non_generation_time: float = 0.0
    """Seconds spent outside the engine (tool calls, environment) while generating."""
    reward_spec: RewardSpec | None = None
    """Per-sample reward choice (Miles's field); its ``rm_type`` wins over ``metadata["rm_type"]``."""

    # -- derived views -------------------------------------------------------------------------

    @property
    def prompt_length(self) -> int:
        """Number of prompt tokens at the start of ``tokens``."""
        return len(self.tokens) - self.response_length

    @property
    def response_tokens(self) -> list[int]:
        """The last ``response_length`` entries of ``tokens``."""
        return self.tokens[len(self.tokens) - self.response_length :]

    def response_text(self, tokenizer: _HasSpecialTokens | None = None) -> str:
        """The response as a reward compares it: special tokens removed, whitespace stripped.

        ``response`` keeps the tokenizer's special tokens, as in Miles (e.g. ``'4<|im_end|>'``), so
        ``sample.response.strip() == sample.label`` never matches a stopped response; compare
        ``sample.response_text()`` instead. The tokens removed are ``tokenizer.all_special_tokens``:
        of ``tokenizer`` when given, else of the running rollout's tokenizer (reward functions run
        inside it). Without either, the usual end and padding markers are removed: any
        ``<|...|>``, ``<s>``, ``</s>``, ``<eos>``, ``<pad>``, ``<end_of_turn>``. Tokens that are
        not special (tool-call tags) stay.
        """
        if tokenizer is None:
            tokenizer = _rollout_tokenizer()
        text = self.response
        if tokenizer is None:
            text = _GENERIC_SPECIAL_TOKENS.sub("", text)
        else:
            # Longest first, so a token that contains another is removed whole.
            for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
                if token:
                    text = text.replace(token, "")
        return text.strip()

    @overload
    def get_reward_value(self, reward_key: str | None = None) -> float: ...

    @overload
    def get_reward_value(self, reward_key: _HasRewardKey) -> RewardValue: ...

    def get_reward_value(self, reward_key: str | _HasRewardKey | None = None) -> RewardValue:
        """The scalar reward: ``reward`` itself, or ``reward[reward_key]`` for dict rewards.

        ``reward_key`` may also be the ``args`` object, whose ``reward_key`` is used: Miles code
        calls ``sample.get_reward_value(args)``, and as in Miles that form returns a dict reward
        itself when ``args.reward_key`` is unset (on-policy distillation's post-process reads the
        teacher's reply that way). With a key string or None, a dict reward without its key is an
        error.

        Raises ValueError when the sample is not scored yet or the key is missing: a missing
        reward must never become a silent zero.
        """
        miles_form = reward_key is not None and not isinstance(reward_key, str)
        if reward_key is not None and not isinstance(reward_key, str):
            reward_key = reward_key.reward_key
        if miles_form and reward_key is None and isinstance(self.reward, dict):
            return self.reward
        if self.reward is None:
            raise ValueError(f"sample index={self.index} has no reward (status={self.status.value})")
        if isinstance(self.reward, dict):
            if reward_key is None:
                raise ValueError(
                    f"sample index={self.index} has a dict reward {sorted(self.reward)}; set reward_key"
                )
            if reward_key not in self.reward:
                raise KeyError(
                    f"reward_key {reward_key!r} not in sample index={self.index} reward {sorted(self.reward)}"
                )
            return float(self.reward[reward_key])
        return float(self.reward)

    def effective_loss_mask(self) -> list[int]:
        """The loss mask actually trained on: all ones when unset, all zeros when removed."""
        if self.remove_sample:
            return [0] * self.response_length
        if self.loss_mask is None:
            return [1] * self.response_length
        return list(self.loss_mask)

    # -- checks and serialisation --------------------------------------------------------------

    def validate(self) -> None:
        """Check that the per-token lists agree with ``response_length``."""
        where = f"sample index={self.index} group={self.group_index}"
        if self.response_length < 0 or self.response_length > len(self.tokens):
            raise SampleValidationError(
                f"{where}: response_length={self.response_length} but len(tokens)={len(self.tokens)}"
            )
        for name in ("loss_mask", "rollout_log_probs", "teacher_log_probs"):
            values = getattr(self, name)
            if values is not None and len(values) != self.response_length:
                raise SampleValidationError(
                    f"{where}: len({name})={len(values)} != response_length={self.response_length}"
                )
        if self.loss_mask is not None and any(m not in (0, 1) for m in self.loss_mask):
            raise SampleValidationError(f"{where}: loss_mask holds values other than 0 and 1")
        if isinstance(self.reward, float) and math.isnan(self.reward):
            raise SampleValidationError(f"{where}: reward is NaN")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; ``Sample.from_dict(s.to_dict()) == s``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, _Status) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        """Rebuild a Sample from :meth:`to_dict` output. Unknown keys are an error, not dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise KeyError(f"Sample.from_dict: unknown keys {sorted(unknown)}")
        kwargs = dict(data)
        if "status" in kwargs:
            kwargs["status"] = _Status(kwargs["status"])
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    """Copy containers so a serialised sample never aliases the live one; tensors become lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class RolloutFnTrainOutput:
    """What a training rollout returns: groups of ``n_samples_per_prompt`` samples."""

    samples: list[list[Sample]]
    """Kept groups, each of n samples, ordered by sample index."""
    metrics: Metrics = field(default_factory=dict)
    """Rollout-level metrics (drop counts, timings) merged into the step's metrics."""


class EvalDatasetResult(TypedDict):
    """One eval dataset's results, keyed by dataset name in ``RolloutFnEvalOutput.data``."""

    rewards: list[float]
    truncated: list[bool]
    samples: list[Sample]


@dataclass
class RolloutFnEvalOutput:
    """What an eval rollout returns: per-dataset rewards, truncation flags and samples."""

    data: dict[str, EvalDatasetResult]
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class DynamicFilterOutput:
    """A dynamic-sampling filter's verdict on one group. ``reason`` names the drop metric."""

    keep: bool
    reason: str | None = None


class TrainData(TypedDict):
    """Samples flattened into per-sample lists, the trainer's input.

    Every list has one entry per sample, in the same order.
    """

    tokens: list[list[int]]
    response_lengths: list[int]
    rewards: list[float]
    raw_reward: list[float]
    truncated: list[int]
    sample_indices: list[int]
    loss_masks: list[list[int]]
    round_number: NotRequired[list[int]]
    rollout_log_probs: NotRequired[list[list[float]]]
    rollout_routed_experts: NotRequired[list[Any]]
    metadata: NotRequired[list[dict[str, Any]]]
    multimodal_train_inputs: NotRequired[list[dict[str, Any] | None]]
    teacher_log_probs: NotRequired[list[list[float]]]
    opd_reverse_kl: NotRequired[list[list[float]]]
