"""Samples -> ``TrainData``: flatten and trim the rollout, post-process rewards, collect fields.

This is Miles's default ``convert_samples_to_train_data``; a custom converter
(``ConvertSamplesToTrainDataFn``) replaces the whole step, reward post-processing included.
Samples are not modified (Miles writes the effective loss mask back into each sample; here it
is only computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from miles_sdk.algo.reward_post import grpo_reward_post_process
from miles_sdk.config import Config
from miles_sdk.hooks import RewardPostProcessFn
from miles_sdk.types import Sample, TrainData

__all__ = ["TrimError", "convert_samples_to_train_data", "flatten_and_trim"]


class TrimError(ValueError):
    """Trimming the rollout to a multiple of the global batch size left nothing to train on."""


def flatten_and_trim(args: Config, groups: Sequence[Sequence[Sample]]) -> list[Sample]:
    """Flatten the rollout's groups and trim to a multiple of ``effective_global_batch_size``.

    Trailing samples are dropped, as in Miles. ``rollout_trim_samples=False`` keeps them all.
    Raises :class:`TrimError` when trimming would leave no sample.
    """
    samples = [s for group in groups for s in group]
    if not args.rollout_trim_samples:
        return samples
    gbs = args.effective_global_batch_size
    keep = len(samples) - len(samples) % gbs
    if keep == 0:
        raise TrimError(
            f"the rollout has {len(samples)} samples, fewer than global_batch_size={gbs}; trimming to a "
            "multiple of it leaves none. Lower global_batch_size, raise rollout_batch_size, or pass "
            "--disable-rollout-trim-samples"
        )
    return samples[:keep]


def _where(pos: int, s: Sample) -> str:
    return f"sample #{pos} (index={s.index}, group={s.group_index})"


def _all_or_none(samples: Sequence[Sample], name: str) -> bool:
    """True when every sample has ``name`` set (not None)."""
    return all(getattr(s, name) is not None for s in samples)


def _floats(values: Any) -> list[float]:
    """Per-token values as floats: Miles's OPD post-process stores a tensor, the SDK a list."""
    if values is None:
        return []
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().reshape(-1).tolist()
    return [float(v) for v in values]


def _round_numbers(samples: Sequence[Sample]) -> list[int] | None:
    # Miles reads metadata["round_number"]; without it, the oldest weight version that produced
    # part of the response tells how stale the sample is.
    if all(isinstance(s.metadata, dict) and "round_number" in s.metadata for s in samples):
        return [int(s.metadata["round_number"]) for s in samples]
    if all(s.weight_versions for s in samples):
        return [min(s.weight_versions) for s in samples]
    return None


def convert_samples_to_train_data(
    args: Config,
    samples: list[Sample],
    reward_post_process: RewardPostProcessFn = grpo_reward_post_process,
) -> TrainData:
    """Build ``TrainData`` from the flattened (and trimmed) samples.

    Always: ``tokens``, ``response_lengths``, ``rewards`` (post-processed), ``raw_reward``
    (``metadata["raw_reward"]`` when every sample has it, else the hook's raw rewards),
    ``truncated`` (1 for TRUNCATED), ``sample_indices``, ``loss_masks`` (all zeros for
    ``remove_sample``). Optional, when every sample has the field: ``rollout_log_probs``,
    ``teacher_log_probs`` (a tensor is read as floats), ``opd_reverse_kl`` (set on samples by a
    top-k OPD post-process), ``rollout_routed_experts``, ``round_number``; when any sample has it:
    ``metadata`` (from ``train_metadata``, ``{}`` where unset) and ``multimodal_train_inputs``.
    """
    if not samples:
        raise ValueError("convert_samples_to_train_data: no samples to train on")
    for pos, s in enumerate(samples):
        try:
            s.validate()
        except ValueError as exc:
            raise ValueError(f"convert_samples_to_train_data: {_where(pos, s)}: {exc}") from exc
        if s.index is None:
            raise ValueError(f"convert_samples_to_train_data: {_where(pos, s)} has no index")

    raw, rewards = reward_post_process(args, samples)
    for name, values in (("raw_rewards", raw), ("rewards", rewards)):
        if len(values) != len(samples):
            raise ValueError(
                f"reward post-processing returned {len(values)} {name} for {len(samples)} samples"
            )

    data: TrainData = {
        "tokens": [list(s.tokens) for s in samples],
        "response_lengths": [s.response_length for s in samples],
        "rewards": [float(r) for r in rewards],
        "raw_reward": [float(r) for r in raw],
        "truncated": [1 if s.status == Sample.Status.TRUNCATED else 0 for s in samples],
        "sample_indices": [s.index for s in samples if s.index is not None],
        "loss_masks": [s.effective_loss_mask() for s in samples],
    }
    if all(isinstance(s.metadata, dict) and "raw_reward" in s.metadata for s in samples):
        data["raw_reward"] = [float(s.metadata["raw_reward"]) for s in samples]

    rounds = _round_numbers(samples)
    if rounds is not None:
        data["round_number"] = rounds
    if _all_or_none(samples, "rollout_log_probs"):
        data["rollout_log_probs"] = [list(s.rollout_log_probs or []) for s in samples]
    if _all_or_none(samples, "teacher_log_probs"):
        data["teacher_log_probs"] = [_floats(s.teacher_log_probs) for s in samples]
    if all(getattr(s, "opd_reverse_kl", None) is not None for s in samples):
        # Top-k OPD: Miles's post-process precomputes each token's reverse KL on the sample.
        data["opd_reverse_kl"] = [_floats(getattr(s, "opd_reverse_kl")) for s in samples]  # noqa: B009 - set by a post-process, not a Sample field
    if _all_or_none(samples, "rollout_routed_experts"):
        data["rollout_routed_experts"] = [s.rollout_routed_experts for s in samples]
    if any(s.train_metadata is not None for s in samples):
        meta: list[dict[str, Any]] = [dict(s.train_metadata or {}) for s in samples]
        data["metadata"] = meta
    if any(s.multimodal_train_inputs is not None for s in samples):
        data["multimodal_train_inputs"] = [s.multimodal_train_inputs for s in samples]
    return data
