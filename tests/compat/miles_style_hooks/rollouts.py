# Miles-style custom rollout functions: sync, blocking on async work the Miles way.
import asyncio

from miles.rollout.base_types import RolloutFnTrainOutput
from miles.rollout.rm_hub import batched_async_rm
from miles.rollout.sglang_rollout import GenerateState, generate
from miles.rollout.sglang_rollout import generate_rollout as base_generate_rollout
from miles.utils.async_utils import run


def wrapped_rollout(args, rollout_id, data_source, evaluation=False):
    result = base_generate_rollout(args, rollout_id, data_source, evaluation=evaluation)
    result.metrics["custom/wrapped_rollout"] = 1.0
    return result


def hand_rolled_rollout(args, rollout_id, data_source, evaluation=False):
    groups = data_source.get_samples(args.rollout_batch_size)
    state = GenerateState(args)

    async def generate_all():
        async def one(sample):
            async with state.semaphore:
                return await generate(args, sample, state.sampling_params.copy())

        samples = await asyncio.gather(*(one(s) for group in groups for s in group))
        rewards = await batched_async_rm(args, list(samples))
        for sample, reward in zip(samples, rewards):
            sample.reward = reward

    run(generate_all())
    return RolloutFnTrainOutput(samples=groups, metrics={"custom/hand_rolled": float(len(groups))})
