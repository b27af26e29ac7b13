"""The default eval rollout (Miles's ``eval_rollout``): every eval dataset generated and scored.

Each dataset's samples (already repeated ``n_samples_per_eval_prompt`` times, with the dataset's
metadata such as ``rm_type`` injected, by ``miles_sdk.data.load_eval_datasets``) are generated
with the eval sampling settings (``eval_*`` over ``rollout_*``, per-dataset values over both) and
scored per sample. The datasets run concurrently under one ``sglang_server_concurrency`` limit.
As in the train rollout, a single-turn group on an engine with ``generate_batch`` goes to the
engine in one call and is scored in one reward call (:class:`~miles_sdk.rollout._shared.GroupBatcher`);
custom and per-sample generate functions run once per sample, each in a task.

A sample whose reward failed is reported as NaN in ``rewards`` (and counted in
``eval/{name}/reward_failed``): never a 0 that would pass for a wrong answer.
"""

from __future__ import annotations

import asyncio
import math
import time

from miles_sdk.config import Config, ConfigError
from miles_sdk.engines.base import SamplingParams
from miles_sdk.rollout._shared import (
    GroupBatcher,
    gather_or_cancel,
    pick_generate_fn,
    run_generate_fn,
    score_unscored,
)
from miles_sdk.rollout.context import EvalDatasetLike, RolloutContext, get_rollout_context
from miles_sdk.rollout.generate import sampling_params_from_args
from miles_sdk.types import EvalDatasetResult, Metrics, RolloutFnEvalOutput, Sample

__all__ = ["eval_rollout", "eval_sampling_params"]


def eval_sampling_params(args: Config, dataset: object) -> SamplingParams:
    """Eval sampling parameters for one dataset: its own settings when set, else ``eval_*``/``rollout_*``."""
    params = sampling_params_from_args(args, evaluation=True)
    temperature = getattr(dataset, "temperature", None)
    if temperature is not None:
        params["temperature"] = float(temperature)
    top_p = getattr(dataset, "top_p", None)
    if top_p is not None:
        params["top_p"] = float(top_p)
    top_k = getattr(dataset, "top_k", None)
    if top_k is not None:
        params["top_k"] = int(top_k)
    max_len = getattr(dataset, "max_response_len", None)
    if max_len is not None:
        params["max_new_tokens"] = int(max_len)
    stop = getattr(dataset, "stop", None)
    if stop is not None:
        params["stop"] = [str(x) for x in stop]
    stop_token_ids = getattr(dataset, "stop_token_ids", None)
    if stop_token_ids is not None:
        params["stop_token_ids"] = [int(x) for x in stop_token_ids]
    return params


async def eval_rollout(args: Config, rollout_id: int) -> RolloutFnEvalOutput:
    """Generate and score every eval dataset of the installed :class:`RolloutContext`.

    Returns ``{name: {"rewards", "truncated", "samples"}}`` with samples sorted by index.
    """
    if args.group_rm:
        raise ConfigError(
            "group_rm is not supported by the default eval rollout (Miles rejects it too): eval scores "
            "each sample alone; pass an eval_fn of your own or turn group_rm off for eval"
        )
    ctx = get_rollout_context()
    if not ctx.eval_datasets:
        raise ConfigError(
            "evaluation=True but RolloutContext.eval_datasets is empty; set eval_prompt_data "
            "(--eval-prompt-data name path ...) or pass eval datasets to the Trainer"
        )
    semaphore = asyncio.Semaphore(args.sglang_server_concurrency)
    batcher = GroupBatcher(args, ctx, semaphore)
    metrics: Metrics = {}
    names = list(ctx.eval_datasets)
    results = await asyncio.gather(
        *(
            _eval_dataset(args, rollout_id, ctx, name, ctx.eval_datasets[name], batcher, metrics)
            for name in names
        )
    )
    return RolloutFnEvalOutput(data=dict(zip(names, results, strict=True)), metrics=metrics)


async def _eval_dataset(
    args: Config,
    rollout_id: int,
    ctx: RolloutContext,
    name: str,
    dataset: EvalDatasetLike,
    batcher: GroupBatcher,
    metrics: Metrics,
) -> EvalDatasetResult:
    start = time.perf_counter()
    base = eval_sampling_params(args, dataset)
    override = getattr(dataset, "custom_generate_function_path", None)
    groups = dataset.groups()
    _number_unindexed(groups)

    def params_for(index_in_group: int) -> SamplingParams:
        params = SamplingParams(**base)
        if args.sglang_enable_deterministic_inference:
            params["sampling_seed"] = args.rollout_seed + index_in_group
        return params

    async def one(sample: Sample, index_in_group: int) -> list[Sample]:
        async with batcher.semaphore:
            samples = await run_generate_fn(
                pick_generate_fn(ctx, sample), args, sample, params_for(index_in_group)
            )
        await score_unscored(args, samples, ctx, batched=False)
        return samples

    async def one_group(group: list[Sample]) -> list[Sample]:
        for sample in group:
            sample.rollout_id = rollout_id
            if override and not sample.generate_function_path:
                sample.generate_function_path = str(override)
        if batcher.can_batch(group):
            await batcher.generate([(s, params_for(j)) for j, s in enumerate(group)])
            await score_unscored(args, group, ctx, batched=False)
            return list(group)
        with batcher.per_sample():
            results = await gather_or_cancel([one(s, j) for j, s in enumerate(group)])
        return [s for r in results for s in r]

    results = await gather_or_cancel([one_group(group) for group in groups])
    samples = sorted((s for r in results for s in r), key=lambda s: -1 if s.index is None else s.index)

    reward_key = getattr(dataset, "reward_key", None) or args.eval_reward_key or args.reward_key
    rewards = [_reward_or_nan(s, reward_key) for s in samples]
    metrics[f"eval/{name}/reward_failed"] = float(sum(s.status is Sample.Status.FAILED for s in samples))
    metrics[f"eval/{name}/time_s"] = time.perf_counter() - start
    return EvalDatasetResult(
        rewards=rewards,
        truncated=[s.status is Sample.Status.TRUNCATED for s in samples],
        samples=samples,
    )


def _reward_or_nan(sample: Sample, reward_key: str | None) -> float:
    if sample.reward is None:
        return math.nan
    return sample.get_reward_value(reward_key)


def _number_unindexed(groups: list[list[Sample]]) -> None:
    """Give eval samples without an index one, in dataset order (the output is sorted by it)."""
    if all(s.index is not None for g in groups for s in g):
        return
    for i, s in enumerate(s for g in groups for s in g):
        s.index = i
