"""over_sampling_max_groups: a rollout whose filter drops most groups stops drawing at the cap."""

from __future__ import annotations

import pytest
from rollout_helpers import CharTokenizer, ListSource, make_config

from miles_sdk.config import Config, ConfigError
from miles_sdk.rollout import RolloutContext, check_reward_nonzero_std, generate_rollout, use_rollout_context
from miles_sdk.testing.engine import ScriptedEngine, ScriptedRequest
from miles_sdk.types import RolloutFnTrainOutput, Sample

TOK = CharTokenizer()


async def yes_rm(args: Config, sample: Sample) -> float:
    return 1.0 if "yes" in sample.response else 0.0


def mostly_solved(prompt: str | list[int], req: ScriptedRequest) -> str:
    """Only 'mixed' prompts split their group (yes/no by seed); every other group is all correct,
    as for a policy that has learned most prompts."""
    assert isinstance(prompt, str)
    if prompt.startswith("mixed"):
        return "yes" if req.sampling_params["sampling_seed"] % 2 == 0 else "no"
    return "yes"


async def rollout(args: Config, source: ListSource, engine: ScriptedEngine) -> RolloutFnTrainOutput:
    ctx = RolloutContext(
        engine=engine, tokenizer=TOK, reward_fn=yes_rm, dynamic_sampling_filter=check_reward_nonzero_std
    )
    with use_rollout_context(ctx):
        out = await generate_rollout(args, 0, source)
    assert isinstance(out, RolloutFnTrainOutput)
    return out


PROMPTS = ["mixed0", *[f"solved{i}" for i in range(40)], "mixed1"]


async def test_without_a_cap_the_rollout_draws_until_the_batch_is_full() -> None:
    args = make_config(rollout_batch_size=2, sglang_enable_deterministic_inference=True)
    source = ListSource(PROMPTS, n=2)
    out = await rollout(args, source, ScriptedEngine(mostly_solved, tokenizer=TOK))
    assert [g[0].prompt for g in out.samples] == ["mixed0", "mixed1"]
    assert out.metrics["rollout/groups_drawn"] == 42


async def test_the_cap_stops_drawing_and_fills_the_batch_with_dropped_groups() -> None:
    """Regression: with check_reward_nonzero_std a policy that solved most prompts made a rollout
    draw ever more groups (the demo's drew 1536 groups, 96 rounds, for one step)."""
    args = make_config(rollout_batch_size=2, over_sampling_max_groups=6, sglang_enable_deterministic_inference=True)
    source = ListSource(PROMPTS, n=2)
    out = await rollout(args, source, ScriptedEngine(mostly_solved, tokenizer=TOK))
    assert out.metrics["rollout/groups_drawn"] == 6
    assert len(out.samples) == 2 and out.samples[0][0].prompt == "mixed0"
    # the other slot holds the latest group the filter dropped: all correct, zero advantage
    assert out.samples[1][0].prompt.startswith("solved") and {s.reward for s in out.samples[1]} == {1.0}
    assert out.metrics["rollout/over_sampling_refilled_groups"] == 1


async def test_the_cap_never_ends_a_rollout_without_a_kept_group() -> None:
    args = make_config(rollout_batch_size=1, over_sampling_max_groups=2, sglang_enable_deterministic_inference=True)
    source = ListSource([*[f"solved{i}" for i in range(5)], "mixed0"], n=2)
    out = await rollout(args, source, ScriptedEngine(mostly_solved, tokenizer=TOK))
    assert [g[0].prompt for g in out.samples] == ["mixed0"]
    assert out.metrics["rollout/groups_drawn"] == 6


def test_a_cap_below_the_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="over_sampling_max_groups"):
        make_config(rollout_batch_size=4, over_sampling_max_groups=3)


async def test_the_unfiltered_reward_mean_counts_the_dropped_groups() -> None:
    """rollout/reward_mean covers the kept groups, which check_reward_nonzero_std picks (each holds
    a right and a wrong answer); rollout/reward_mean_unfiltered is over every scored group."""
    args = make_config(rollout_batch_size=2, over_sampling_max_groups=6, sglang_enable_deterministic_inference=True)
    out = await rollout(args, ListSource(PROMPTS, n=2), ScriptedEngine(mostly_solved, tokenizer=TOK))
    # 6 groups drawn: mixed0 (one right of two) and five all-right groups
    assert out.metrics["rollout/reward_mean_unfiltered"] == pytest.approx((1 + 5 * 2) / 12)
