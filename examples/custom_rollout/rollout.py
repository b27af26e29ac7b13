"""Best-of-n rejection rollout: ``--rollout-function-path examples.custom_rollout.rollout.best_of_n_rollout``.
See the package docstring."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from miles_sdk.config import Config
from miles_sdk.hooks import DataSource, RolloutFn
from miles_sdk.rewards import score_samples
from miles_sdk.rollout import (
    RolloutContext,
    RolloutError,
    generate_rollout,
    generate_with_engine,
    get_rollout_context,
    sampling_params_from_args,
)
from miles_sdk.types import RolloutFnEvalOutput, RolloutFnTrainOutput, Sample

__all__ = ["BEST_OF_N_CONFIGS", "best_of_n_rollout", "best_reward"]

BEST_OF_N_CONFIGS: dict[str, float] = {
    "reward_threshold": 1.0,  # keep a group whose best sample scores at least this
    "max_rounds": 4,  # prompt draws per step before topping up with rejected groups
}


def best_reward(args: Config, group: list[Sample]) -> float:
    """The highest scalar reward of a scored group."""
    return max(s.get_reward_value(args.reward_key) for s in group)


async def _generate_and_score(
    args: Config, group: list[Sample], ctx: RolloutContext, semaphore: asyncio.Semaphore, rollout_id: int
) -> list[Sample]:
    params = sampling_params_from_args(args)

    async def one(sample: Sample) -> Sample:
        sample.rollout_id = rollout_id
        async with semaphore:
            return await generate_with_engine(args, sample, params)

    group = list(await asyncio.gather(*(one(s) for s in group)))
    # FAILED samples (the reward raised) come back without a reward; their group is dropped.
    await score_samples(
        args,
        group,
        reward_fn=ctx.reward_fn,
        batched_reward_fn=ctx.batched_reward_fn if args.group_rm else None,
    )
    return group


async def best_of_n_rollout(
    args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """Keep groups whose best sample reaches ``reward_threshold``; see the package docstring."""
    if evaluation:
        return await generate_rollout(args, rollout_id, data_source, evaluation=True)
    start = time.perf_counter()
    ctx = get_rollout_context()
    semaphore = asyncio.Semaphore(args.sglang_server_concurrency)
    threshold = BEST_OF_N_CONFIGS["reward_threshold"]
    target = args.rollout_batch_size
    kept: list[list[Sample]] = []
    rejected: list[list[Sample]] = []
    counts: Counter[str] = Counter()
    for _ in range(int(BEST_OF_N_CONFIGS["max_rounds"])):
        if len(kept) >= target:
            break
        groups = data_source.get_samples(target - len(kept))
        if not groups:
            raise RolloutError(
                f"best_of_n_rollout: the data source returned no groups in rollout {rollout_id}"
            )
        counts["rollout/best_of_n/rounds"] += 1
        counts["rollout/best_of_n/groups_drawn"] += len(groups)
        scored = await asyncio.gather(
            *(_generate_and_score(args, g, ctx, semaphore, rollout_id) for g in groups)
        )
        for group in scored:
            if any(s.reward is None for s in group):
                counts["rollout/best_of_n/reward_failed_groups"] += 1
            elif best_reward(args, group) >= threshold:
                kept.append(group)
            else:
                rejected.append(group)
    counts["rollout/best_of_n/rejected"] += len(rejected)
    if len(kept) < target:
        # Train on a full batch anyway: the closest misses are the most useful of the rejects.
        rejected.sort(key=lambda g: best_reward(args, g), reverse=True)
        top_up = rejected[: target - len(kept)]
        counts["rollout/best_of_n/topped_up"] += len(top_up)
        kept += top_up
    if len(kept) < target:
        raise RolloutError(
            f"best_of_n_rollout: only {len(kept)} of {target} groups could be scored in rollout {rollout_id} "
            f"({counts['rollout/best_of_n/reward_failed_groups']} groups failed reward scoring)"
        )
    kept = sorted(kept[:target], key=lambda g: min(s.index or 0 for s in g))
    metrics = {k: float(v) for k, v in counts.items()}
    metrics.setdefault("rollout/best_of_n/topped_up", 0.0)
    metrics["rollout/time_s"] = time.perf_counter() - start
    return RolloutFnTrainOutput(samples=kept, metrics=metrics)


# The hook type-checks against the Protocol the Trainer expects (mypy --strict).
_rollout: RolloutFn = best_of_n_rollout
