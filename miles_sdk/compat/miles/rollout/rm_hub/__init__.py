"""Shim of ``miles.rollout.rm_hub``: ``async_rm`` / ``batched_async_rm`` on miles_sdk's rewards.

Which reward scores a sample, as in Miles: ``args.custom_rm_path`` when set, else the built-in
rm type (``metadata["rm_type"]``, then ``args.rm_type``; ``boxed_`` prefixes work). Inside a
Trainer, a reward passed as an object (``Trainer(reward_model=..., batched_reward_model=...)``)
counts as the custom rm. Built-in graders are miles_sdk's (docs/rewards.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from miles_sdk.compat.miles.rollout.rm_hub.math_dapo_utils import compute_score as compute_score_dapo
from miles_sdk.compat.miles.rollout.rm_hub.math_utils import extract_answer as extract_boxed_answer
from miles_sdk.compat.miles.rollout.rm_hub.math_utils import grade_answer_verl
from miles_sdk.compat.miles.utils.misc import load_function
from miles_sdk.config import Config
from miles_sdk.rewards import RewardConfigError, compute_builtin_reward, f1_score
from miles_sdk.rewards import remote_rm as _remote_rm
from miles_sdk.rewards.runner import call_reward
from miles_sdk.rollout.context import RolloutContext, RolloutContextError, get_rollout_context
from miles_sdk.types import RewardValue, Sample

__all__ = [
    "_resolve_reward_config",
    "async_rm",
    "batched_async_rm",
    "compute_score_dapo",
    "extract_boxed_answer",
    "f1_score",
    "grade_answer_verl",
    "remote_rm",
]


def _context() -> RolloutContext | None:
    try:
        return get_rollout_context()
    except RolloutContextError:
        return None


async def remote_rm(args: Config, sample: Sample) -> RewardValue:
    """POST ``{prompt, response, label}`` to ``args.rm_url`` and return the reply."""
    return await _remote_rm(args, sample)


def _resolve_reward_config(args: Any, sample: Sample) -> tuple[str | None, str]:
    """``(custom_rm_path, rm_type)`` for ``sample``: the fields of ``sample.reward_spec`` that are
    set win; unset ones fall back to ``metadata["rm_type"]`` and ``args`` (Miles's precedence)."""
    spec = sample.reward_spec
    metadata = sample.metadata if isinstance(sample.metadata, dict) else {}
    path = (spec.custom_rm_path if spec is not None else None) or getattr(args, "custom_rm_path", None)
    rm_type = (spec.rm_type if spec is not None else None) or metadata.get("rm_type") or getattr(args, "rm_type", None)
    return path, (rm_type or "").strip()


async def async_rm(args: Config, sample: Sample, **kwargs: Any) -> RewardValue:
    """Score one sample: its custom rm path (``reward_spec``, then ``args.custom_rm_path``, called
    with ``kwargs``), else the Trainer's reward object, else the built-in rm type. Errors propagate
    (the caller decides what a failure means); an unknown or missing rm type is Miles's
    NotImplementedError."""
    path, rm_type = _resolve_reward_config(args, sample)
    fn = load_function(path) if path else None
    if fn is not None and fn is not async_rm:  # --custom-rm-path naming async_rm itself means the built-ins
        result: RewardValue = await fn(args, sample, **kwargs)
        return result
    ctx = _context()
    if ctx is not None and ctx.reward_fn is not None:
        # async def or plain def (run in a thread): the runner's call handles both
        return cast(RewardValue, await call_reward(args, ctx.reward_fn, sample, name="reward_model"))
    if not rm_type:
        raise NotImplementedError("Rule-based RM type is not specified.")
    try:
        return await compute_builtin_reward(args, sample)
    except RewardConfigError as exc:
        raise NotImplementedError(f"Rule-based RM for {rm_type} is not implemented. ({exc})") from exc


async def batched_async_rm(
    args: Config, samples: list[Sample], inplace_set_reward_field: bool = False, **kwargs: Any
) -> list[RewardValue] | None:
    """Score ``samples`` together. As in Miles, ``args.custom_rm_path`` is called once with the whole
    list; without it each sample goes through :func:`async_rm`'s choice, concurrently.

    With ``inplace_set_reward_field`` the rewards are written to ``sample.reward`` (a sample that
    already has one is an error) and None is returned.
    """
    if inplace_set_reward_field:
        rewards = await batched_async_rm(args, samples, **kwargs)
        assert rewards is not None
        for sample, reward in zip(samples, rewards, strict=True):
            if sample.reward is not None:  # Miles asserts here
                raise AssertionError(
                    f"Overriding sample.reward from {sample.reward} to {reward}, is this intended? "
                    f"(batched_async_rm(inplace_set_reward_field=True), sample index={sample.index})"
                )
            sample.reward = reward
        return None
    ctx = _context()
    batched: Sequence[RewardValue]
    if ctx is not None and ctx.batched_reward_fn is not None:
        batched = cast(
            Sequence[RewardValue],
            await call_reward(args, ctx.batched_reward_fn, samples, name="batched_reward_model"),
        )
    elif getattr(args, "custom_rm_path", None) and load_function(args.custom_rm_path) not in (
        async_rm,
        batched_async_rm,
    ):
        batched = await load_function(args.custom_rm_path)(args, samples, **kwargs)
    else:
        return list(await asyncio.gather(*(async_rm(args, s, **kwargs) for s in samples)))
    out = list(batched)
    if len(out) != len(samples):
        raise ValueError(f"batched reward returned {len(out)} rewards for {len(samples)} samples")
    return out
