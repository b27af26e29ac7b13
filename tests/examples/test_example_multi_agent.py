"""examples/multi_agent: two engine calls per prompt, a list return, one batched reward per group."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from examples.multi_agent import run
from examples.multi_agent.hooks import critic_group_index, generate, parse_verdict, reward_fn
from miles_sdk.algo import grpo_reward_post_process
from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSourceWithBuffer
from miles_sdk.hooks import BatchedRewardFn, GenerateFn
from miles_sdk.rollout import RolloutContext, train_rollout, use_rollout_context
from miles_sdk.testing import ScriptedEngine, call_hook, check_hook, make_sample, tiny_tokenizer
from miles_sdk.types import RewardValue, Sample

ROWS = [{"input": "3+4=", "label": "7"}, {"input": "2+2=", "label": "4"}]
# The solver gets 3+4 right and 2+2 wrong; the critic always says "yes".
SCRIPT = {"3+4=": "7<|im_end|>", "2+2=": "5<|im_end|>", "Correct?": "yes<|im_end|>"}


async def test_generate_calls_solver_then_critic_and_returns_both() -> None:
    tok = tiny_tokenizer()
    engine = ScriptedEngine(SCRIPT, tokenizer=tok)
    sample = Sample(prompt="3+4=", label="7", group_index=5, index=11, metadata={"source": "demo"})
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        result = await generate(Config(), sample, {"max_new_tokens": 8})

    solver, critic = result
    assert solver is sample and solver.response == "7<|im_end|>"
    assert [r.text for r in engine.requests] == ["3+4=", "3+4=7\nCorrect? "]
    assert critic.response == "yes<|im_end|>"
    assert (critic.group_index, critic.index, critic.label) == (-6, 11, "7")
    assert solver.metadata == {"source": "demo", "role": "solver"}
    assert critic.metadata == {"source": "demo", "role": "critic", "solver_answer": "7"}
    assert critic.tokens == tok.encode("3+4=7\nCorrect? yes<|im_end|>")
    assert call_hook(reward_fn, Config(), [solver, critic]) == [1.0, 1.0]


async def test_the_default_rollout_trains_both_roles_and_scores_each_group_once() -> None:
    tok = tiny_tokenizer()
    args = Config(label_key="label", rollout_batch_size=2, n_samples_per_prompt=2, group_rm=True)
    calls: list[int] = []

    async def counting_reward(a: Config, samples: list[Sample]) -> Sequence[RewardValue]:
        calls.append(len(samples))
        return await reward_fn(a, samples)

    ctx = RolloutContext(
        engine=ScriptedEngine(SCRIPT, tokenizer=tok),
        tokenizer=tok,
        generate_fn=generate,
        batched_reward_fn=counting_reward,
    )
    with use_rollout_context(ctx):
        out = await train_rollout(args, 0, RolloutDataSourceWithBuffer(args, tokenizer=tok, dataset=ROWS))

    assert calls == [4, 4]  # one batched call per prompt group: 2 solvers + 2 critics
    by_prompt = {g[0].prompt: g for g in out.samples}
    assert sorted(by_prompt) == ["2+2=", "3+4="]
    roles = [s.metadata["role"] for s in by_prompt["3+4="]]
    assert sorted(roles) == ["critic", "critic", "solver", "solver"]
    # Right solver + "yes" critic: all 1. Wrong solver ("5") + "yes" critic: all 0.
    assert [s.reward for s in by_prompt["3+4="]] == [1.0] * 4
    assert [s.reward for s in by_prompt["2+2="]] == [0.0] * 4


def test_roles_are_normalised_in_separate_groups() -> None:
    solvers = [make_sample("1+1=", r, label="2") for r in ("2", "3")]
    critics = [make_sample("1+1=2\nCorrect? ", "yes", label="2") for _ in range(2)]
    for s in solvers:
        s.group_index, s.metadata = 0, {"role": "solver"}
    for c, answer in zip(critics, ("2", "3"), strict=True):
        c.group_index, c.metadata = critic_group_index(0), {"role": "critic", "solver_answer": answer}
    samples = solvers + critics
    rewards = call_hook(reward_fn, Config(), samples)
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    for s, r in zip(samples, rewards, strict=True):
        s.reward = r
    # Each role's group is [1, 0]: mean 0.5, unbiased std sqrt(0.5), so +-0.5 / sqrt(0.5).
    _, normalised = grpo_reward_post_process(Config(), samples)
    assert normalised == pytest.approx([0.5**0.5, -(0.5**0.5)] * 2, abs=1e-5)


def test_reward_rejects_samples_without_a_role_and_verdict_parsing() -> None:
    with pytest.raises(ValueError, match="role=None"):
        call_hook(reward_fn, Config(), [make_sample("1+1=", "2", label="2")])
    assert (parse_verdict(" Yes."), parse_verdict("no<|im_end|>"), parse_verdict("maybe")) == (
        True,
        False,
        None,
    )
    check_hook(generate, GenerateFn)
    check_hook(reward_fn, BatchedRewardFn)


def test_run_trains_two_steps_on_solver_and_critic_samples(tmp_path: Path) -> None:
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "rollout/num_samples" in r]
    assert len(steps) == 2
    assert all(r["rollout/num_samples"] == 8 for r in steps)  # 2 prompts x 2 samples x 2 roles
