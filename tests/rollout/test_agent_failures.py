"""A sample FAILED by its agent is counted and reported as an agent failure, not a reward failure."""

from __future__ import annotations

import copy

import pytest
from rollout_helpers import CharTokenizer, ListSource, make_config

from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.rollout import RolloutContext, RolloutError, generate_rollout, use_rollout_context
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.types import RolloutFnTrainOutput, Sample

TOK = CharTokenizer()


async def rm(args: Config, sample: Sample) -> float:
    return 1.0 if sample.response == "yes" else 0.0


async def agent_like(args: Config, sample: Sample, params: SamplingParams) -> Sample:
    """What generate_with_agent returns when the agent raised (for 'broken' prompts)."""
    out = copy.deepcopy(sample)
    if str(sample.prompt).startswith("broken"):
        out.status = Sample.Status.FAILED
        out.metadata["agent_error"] = "agent my.agent raised RuntimeError: environment down"
        return out
    out.response = "yes" if (sample.index or 0) % 2 else "no"
    out.status = Sample.Status.COMPLETED
    return out


async def rollout(args: Config, source: ListSource) -> RolloutFnTrainOutput:
    engine = ScriptedEngine("x", tokenizer=TOK)
    ctx = RolloutContext(engine=engine, tokenizer=TOK, reward_fn=rm, generate_fn=agent_like)
    with use_rollout_context(ctx):
        out = await generate_rollout(args, 0, source)
    assert isinstance(out, RolloutFnTrainOutput)
    return out


async def test_agent_failures_are_counted_as_agent_failures() -> None:
    """Regression: the rollout read only reward_error, so a failed agent was logged as
    'reward failed: unknown error' and counted in rollout/reward_failed_frac."""
    args = make_config(rollout_batch_size=2, over_sampling_batch_size=3)
    out = await rollout(args, ListSource(["ok0", "broken0", "ok1"], n=2))
    assert [g[0].prompt for g in out.samples] == ["ok0", "ok1"]
    assert out.metrics["rollout/agent_failed"] == 2
    assert out.metrics["rollout/dropped_groups/agent_failed"] == 1
    assert out.metrics["rollout/reward_failed_frac"] == 0.0


async def test_a_rollout_whose_agents_all_fail_names_the_agent_error() -> None:
    with pytest.raises(RolloutError, match="agent failed: agent my.agent raised RuntimeError: environment"):
        await rollout(make_config(rollout_batch_size=2), ListSource(["broken0", "broken1"], n=2))
