"""The typed values that flow between the stages of one rollout step (docs/internals.md).

::

    rollout_fn ──> Rollout ──flatten/trim──> list[Sample] ──convert──> TrainData
        ──log-probs──> PolicyOutputs ──advantages──> TrainBatch ──backend.train──> Metrics
                                                      └─ micro-batches: MicroBatch ──> compute_loss

``Rollout``, ``PolicyOutputs``, ``TrainBatch`` and ``MicroBatch`` are frozen: a stage returns a
new value rather than editing the one it got (``attrs.evolve`` makes a changed copy). Frozen
means the fields cannot be rebound; the lists and tensors they hold are shared, not copied, so
building these values costs nothing per token.

``TrainData`` (``miles_sdk.types``) stays Miles's typed dict, since Miles's
``convert_samples_to_train_data`` hooks return one. Hooks that Miles types as a dict
(``rollout_data_postprocess``, a custom ``loss_fn``) get ``as_dict()``: Miles's layout, and what
the hook writes into it is read back (``TrainBatch.from_dict``), so it trains on their edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
import torch

from miles_sdk.types import Metrics, Sample, TrainData

__all__ = ["MicroBatch", "PolicyOutputs", "Rollout", "StageDataError", "TrainBatch"]

_T = TypeVar("_T")


class StageDataError(ValueError):
    """A value handed between stages (often by a hook editing Miles's dict) is malformed; the
    message names the key and who handed it over."""


@attrs.frozen
class Rollout:
    """Stages 1-2 (``rollout_fn``): the rollout's groups of samples and its own metrics."""

    groups: list[list[Sample]]
    """``rollout_batch_size`` groups (fewer after filters) of ``n_samples_per_prompt`` samples."""
    metrics: Metrics = attrs.field(factory=dict)
    """The rollout function's counts (drops, aborts, over-sampling rounds, ...)."""


@attrs.frozen
class PolicyOutputs:
    """Stage 5: what the training backend computes over the samples before the advantages.

    Every tensor is 1-D over sample i's response tokens (``response_lengths[i]`` entries), float32.
    """

    log_probs: list[torch.Tensor] | None
    """The old policy's log-probs (the engine's with ``use_rollout_logprobs``). None when the step
    is on-policy (``algo.old_log_probs_are_current``): the train pass's own, detached, are they."""
    ref_log_probs: list[torch.Tensor] | None = None
    """The reference model's log-probs; None without a reference model."""
    values: list[torch.Tensor] | None = None
    """The critic's values (ppo); None without a critic."""


# Keys of Miles's rollout-data dict that TrainBatch holds as fields (the rest go to ``extra``).
_REQUIRED = (
    "tokens",
    "response_lengths",
    "rewards",
    "raw_reward",
    "truncated",
    "sample_indices",
    "loss_masks",
)
_OPTIONAL = (
    "round_number",
    "rollout_log_probs",
    "rollout_routed_experts",
    "metadata",
    "multimodal_train_inputs",
    "teacher_log_probs",
    "opd_reverse_kl",
)
_COMPUTED = ("log_probs", "ref_log_probs", "values", "advantages", "returns")


@attrs.frozen(kw_only=True)
class TrainBatch:
    """Stage 6 -> 7: one rollout's training data, what ``TrainBackend.train`` consumes.

    Every list has one entry per sample, in the same order. Per-token tensors are 1-D over the
    response tokens (``response_lengths[i]`` entries), float32, on the CPU unless a hook moved them.
    """

    tokens: list[list[int]]
    """Prompt + response token ids per sample."""
    response_lengths: list[int]
    """Response tokens per sample (the trained tail of ``tokens``)."""
    rewards: list[float]
    """Post-processed rewards (group-normalised for grpo / gspo)."""
    raw_reward: list[float]
    """Rewards before post-processing (logged)."""
    truncated: list[int]
    """1 where the sample hit the length limit."""
    sample_indices: list[int]
    """``Sample.index`` per sample."""
    loss_masks: list[list[int]]
    """0/1 per response token; 0 = not trained (tool output, ``remove_sample``)."""
    advantages: list[torch.Tensor]
    """Per-token advantages (after ``normalize_advantages`` and OPD, when set)."""
    returns: list[torch.Tensor]
    """Per-token returns (the critic's targets with ppo)."""
    log_probs: list[torch.Tensor] | None = None
    """See :attr:`PolicyOutputs.log_probs` (None: on-policy)."""
    ref_log_probs: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    round_number: list[int] | None = None
    """The oldest weight version each response came from (partial rollouts)."""
    rollout_log_probs: list[list[float]] | None = None
    """The engine's log-probs per response token."""
    rollout_routed_experts: list[Any] | None = None
    """MoE routing replay, as the engine reported it (opaque here)."""
    metadata: list[dict[str, Any]] | None = None
    """``Sample.train_metadata`` per sample (``{}`` where unset)."""
    multimodal_train_inputs: list[dict[str, Any] | None] | None = None
    teacher_log_probs: list[list[float]] | None = None
    """On-policy distillation: the teacher's log-prob per response token."""
    opd_reverse_kl: list[list[float]] | None = None
    """On-policy distillation: student minus teacher log-prob per token (set by the OPD stage)."""
    extra: Mapping[str, object] = attrs.field(factory=dict)
    """Keys a Miles-style hook added to the rollout-data dict that the SDK does not know; they
    go back into :meth:`as_dict` for later hooks."""

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(
        cls,
        data: TrainData,
        policy: PolicyOutputs,
        *,
        advantages: list[torch.Tensor],
        returns: list[torch.Tensor],
        opd_reverse_kl: list[list[float]] | None = None,
    ) -> TrainBatch:
        """Stage 6's output: the converted data, the backend's outputs and the advantages."""
        return cls(
            tokens=data["tokens"],
            response_lengths=data["response_lengths"],
            rewards=data["rewards"],
            raw_reward=data["raw_reward"],
            truncated=data["truncated"],
            sample_indices=data["sample_indices"],
            loss_masks=data["loss_masks"],
            advantages=advantages,
            returns=returns,
            log_probs=policy.log_probs,
            ref_log_probs=policy.ref_log_probs,
            values=policy.values,
            round_number=data.get("round_number"),
            rollout_log_probs=data.get("rollout_log_probs"),
            rollout_routed_experts=data.get("rollout_routed_experts"),
            metadata=data.get("metadata"),
            multimodal_train_inputs=data.get("multimodal_train_inputs"),
            teacher_log_probs=data.get("teacher_log_probs"),
            opd_reverse_kl=opd_reverse_kl if opd_reverse_kl is not None else data.get("opd_reverse_kl"),
        )

    def as_dict(self) -> dict[str, Any]:
        """Miles's ``rollout_data`` dict: the TrainData keys (optional ones only when set), plus
        ``log_probs``, ``ref_log_probs``, ``values``, ``advantages``, ``returns`` (None allowed)
        and the ``extra`` keys. The lists are this batch's own; read edits back with
        :meth:`from_dict`."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _REQUIRED}
        out.update({key: getattr(self, key) for key in _OPTIONAL if getattr(self, key) is not None})
        out.update({key: getattr(self, key) for key in _COMPUTED})
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> TrainBatch:
        """The batch a Miles-style hook left in its dict (``where`` names the hook in errors)."""
        missing = [key for key in (*_REQUIRED, "advantages", "returns") if data.get(key) is None]
        if missing:
            raise StageDataError(f"{where}: the rollout data has no {', '.join(map(repr, missing))}")
        n = len(data["tokens"])
        for key in (*_REQUIRED, *_OPTIONAL, *_COMPUTED):
            value = data.get(key)
            if value is not None and len(value) != n:
                raise StageDataError(
                    f"{where}: rollout data {key!r} has {len(value)} entries for {n} samples"
                )
        known = {*_REQUIRED, *_OPTIONAL, *_COMPUTED}
        fields: dict[str, Any] = {
            key: _as_list(data[key]) if data.get(key) is not None else None for key in known
        }
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(**fields, extra=extra)

    def select(self, idx: Sequence[int]) -> TrainBatch:
        """The samples at ``idx``, in that order (a training rank's share); ``extra`` as is."""
        changes: dict[str, Any] = {}
        for field in attrs.fields(TrainBatch):
            value = getattr(self, field.name)
            if field.name != "extra" and value is not None:
                changes[field.name] = [value[i] for i in idx]
        return attrs.evolve(self, **changes)


def _as_list(value: Sequence[_T]) -> list[_T]:
    return value if isinstance(value, list) else list(value)


@attrs.frozen(kw_only=True)
class MicroBatch:
    """The slice of a :class:`TrainBatch` that one forward/backward pass trains on, on the device.

    Per-sample tensors are 1-D: tokens over the whole sequence (int64), the rest over the
    response tokens (float32).
    """

    tokens: list[torch.Tensor]
    """Token ids per sample (int64, on the device)."""
    token_lists: list[list[int]]
    """The same token ids as host lists (Miles's ``unconcat_tokens_list``)."""
    response_lengths: list[int]
    total_lengths: list[int]
    """``len(tokens[i])``."""
    loss_masks: list[torch.Tensor]
    """0/1 per response token (float32)."""
    rewards: list[float] = attrs.field(factory=list)
    sample_indices: list[int] = attrs.field(factory=list)
    advantages: list[torch.Tensor] | None = None
    returns: list[torch.Tensor] | None = None
    log_probs: list[torch.Tensor] | None = None
    """The old log-probs; None on an on-policy step (the current ones, detached, stand in)."""
    ref_log_probs: list[torch.Tensor] | None = None
    rollout_log_probs: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    """The critic's old values (ppo)."""

    def as_dict(self) -> dict[str, Any]:
        """Miles's micro-batch dict, as a custom ``LossFn`` receives it."""
        return {
            "unconcat_tokens_list": self.token_lists,
            "unconcat_tokens": self.tokens,
            "tokens": list(self.tokens),
            "response_lengths": self.response_lengths,
            "total_lengths": self.total_lengths,
            "loss_masks": self.loss_masks,
            "rewards": self.rewards,
            "sample_indices": self.sample_indices,
            "log_probs": self.log_probs,
            "ref_log_probs": self.ref_log_probs,
            "rollout_log_probs": self.rollout_log_probs,
            "advantages": self.advantages,
            "returns": self.returns,
            "values": self.values,
        }

    @classmethod
    def from_dict(cls, batch: Mapping[str, Any]) -> MicroBatch:
        """From Miles's micro-batch layout (tests, Miles-style code). ``log_probs`` must be present
        (None means on-policy); ``tokens`` may be left out when only a loss is computed."""
        if "log_probs" not in batch:
            raise KeyError(
                "micro-batch has no 'log_probs' key: pass the old log-probs, or None for an on-policy step"
            )

        def tensors(key: str) -> list[torch.Tensor] | None:
            value = batch.get(key)
            return None if value is None else [torch.as_tensor(v) for v in value]

        masks = tensors("loss_masks")
        if masks is None:
            raise KeyError("micro-batch has no 'loss_masks'")
        return cls(
            tokens=tensors("tokens") or [],
            token_lists=list(batch.get("unconcat_tokens_list") or []),
            response_lengths=list(batch["response_lengths"]),
            total_lengths=list(batch["total_lengths"]),
            loss_masks=masks,
            rewards=list(batch.get("rewards") or []),
            sample_indices=list(batch.get("sample_indices") or []),
            advantages=tensors("advantages"),
            returns=tensors("returns"),
            log_probs=tensors("log_probs"),
            ref_log_probs=tensors("ref_log_probs"),
            rollout_log_probs=tensors("rollout_log_probs"),
            values=tensors("values"),
        )
