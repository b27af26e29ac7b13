"""Default reward post-processing (``RewardPostProcessFn``): GRPO group normalisation.

For grpo, gspo and reinforce_plus_plus_baseline (unless ``rewards_normalization`` is off), each
reward has its group's mean subtracted; for grpo and gspo it is also divided by the group's
unbiased std + 1e-6 when the group has more than one sample, the std is > 0 and
``grpo_std_normalization`` is on. Samples with ``remove_sample`` still count in their group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from miles_sdk.config import Config
from miles_sdk.types import Sample

__all__ = ["MissingRewardError", "group_slices", "grpo_reward_post_process", "raw_rewards"]

_CENTRED = ("grpo", "gspo", "reinforce_plus_plus_baseline")
_STD_SCALED = ("grpo", "gspo")
_STD_EPS = 1e-6


class MissingRewardError(ValueError):
    """A sample reached training without a usable reward (unscored, FAILED, NaN, missing key)."""


def raw_rewards(args: Config, samples: Sequence[Sample]) -> list[float]:
    """``sample.get_reward_value(args.reward_key)`` for each sample, with errors naming the sample.

    FAILED and unscored samples must be dropped before training; their reward is never a zero.
    """
    out: list[float] = []
    for pos, s in enumerate(samples):
        where = f"sample #{pos} (index={s.index}, group={s.group_index}, status={s.status.value})"
        if s.reward is None:
            reason = s.metadata.get("reward_error") if isinstance(s.metadata, dict) else None
            extra = f"; reward_error: {reason}" if reason else ""
            raise MissingRewardError(
                f"{where} has no reward{extra}. FAILED or unscored samples must be dropped before "
                "reward post-processing (a missing reward is never turned into 0)"
            )
        try:
            value = s.get_reward_value(args.reward_key)
        except (KeyError, ValueError) as exc:
            raise MissingRewardError(f"{where}: {exc}") from exc
        if not math.isfinite(value):
            raise MissingRewardError(f"{where} has a non-finite reward {value}")
        out.append(value)
    return out


def group_slices(args: Config, samples: Sequence[Sample]) -> list[list[int]]:
    """Positions of the samples of each prompt group, in first-seen order.

    Groups by ``group_index``; when no sample has one, consecutive runs of
    ``n_samples_per_prompt`` (Miles's fixed layout). A mix of set and unset is an error.
    """
    ids = [s.group_index for s in samples]
    if all(g is not None for g in ids):
        by_group: dict[int, list[int]] = {}
        for pos, g in enumerate(ids):
            assert g is not None
            by_group.setdefault(g, []).append(pos)
        return list(by_group.values())
    if any(g is not None for g in ids):
        missing = [pos for pos, g in enumerate(ids) if g is None][:5]
        raise ValueError(f"reward post-processing: samples at positions {missing} have no group_index")
    n = args.n_samples_per_prompt
    if len(samples) % n:
        raise ValueError(
            f"reward post-processing: samples have no group_index and {len(samples)} is not a multiple "
            f"of n_samples_per_prompt={n}"
        )
    return [list(range(start, start + n)) for start in range(0, len(samples), n)]


def grpo_reward_post_process(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
    """Miles's default ``(raw_rewards, rewards)``: group-centred (and for grpo/gspo std-scaled)."""
    raw = raw_rewards(args, samples)
    if not args.rewards_normalization or args.advantage_estimator not in _CENTRED:
        return raw, list(raw)
    scale_std = args.advantage_estimator in _STD_SCALED and args.grpo_std_normalization
    out = [0.0] * len(raw)
    for positions in group_slices(args, samples):
        group = torch.tensor([raw[p] for p in positions], dtype=torch.float64)
        centred = group - group.mean()
        if scale_std and group.numel() > 1:
            std = group.std(correction=1)
            if std > 0:
                centred = centred / (std + _STD_EPS)
        for p, value in zip(positions, centred.tolist(), strict=True):
            out[p] = value
    return raw, out
