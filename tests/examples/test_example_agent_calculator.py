"""examples/agent_calculator: the environment, the reward, the warm-up's token split, the exact
trajectory the trainer sees, and a short run that learns."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from examples.agent_calculator import run
from examples.agent_calculator.agent import ADD_TOOL, calculator_agent, reward_fn, run_tool
from miles_sdk.agents import AgentEndpoint, run_agent
from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import tiny_tokenizer
from miles_sdk.types import Sample

RUN_ROLLOUTS = 8


def test_tool_and_reward() -> None:
    assert run_tool("add", {"a": 3, "b": "4"}) == "7"
    assert run_tool("mul", {"a": 1, "b": 2}).startswith("error: unknown tool")
    assert run_tool("add", {"a": 1}).startswith("error: add needs")
    sample = Sample(label="7", metadata={"answer": " 7"})
    assert asyncio.run(reward_fn(Config(), sample)) == 1.0
    sample.metadata["answer"] = "8"
    assert asyncio.run(reward_fn(Config(), sample)) == 0.0


def test_warmup_trains_on_exactly_the_tokens_a_session_records() -> None:
    """The warm-up's episode, replayed through the endpoint by the example's agent with an engine
    that emits the warm-up's model turns, gives the same ids and the same trained positions."""
    tok = tiny_tokenizer()
    tok.chat_template = run.CHAT_TEMPLATE
    ids, labels = run._conversation(tok, 2, 5, answer=4)
    trained = [i for i, label in enumerate(labels) if label != -100]
    runs = [[trained[0]]]
    for i in trained[1:]:
        (runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i]))
    turns = [[ids[i] for i in r] for r in runs]
    assert len(turns) == 2

    class Replay:
        weight_version = 0

        async def generate(self, input_ids: list[int], params: SamplingParams) -> EngineOutput:
            out = turns.pop(0)
            return EngineOutput(out, [-1.0] * len(out), FinishReason.STOP, 0)

    async def episode() -> list[int]:

        endpoint = AgentEndpoint(Replay(), tok)  # type: ignore[arg-type]
        await endpoint.start()
        try:
            session = endpoint.sessions.create()
            result = await calculator_agent(
                base_url=endpoint.session_url(session), prompt="2+5", request_kwargs={}, metadata={}
            )
            assert result == {"answer": "4", "tool_calls": 1}
            last = session.records[-1]
            return last.prompt_ids + last.output_ids
        finally:
            await endpoint.close()

    assert asyncio.run(episode()) == ids
    assert ADD_TOOL["function"]["name"] == "add"


def test_one_training_step_runs(tmp_path: object) -> None:
    result = run.train(1, str(tmp_path), warmup_steps=2, rollout_batch_size=1, preset="unit", dynamic_sampling=False)
    assert len(result.history) == 1 and "rollout/reward_mean" in result.history[0]


def test_the_dataset_keeps_the_three_numbers_apart() -> None:
    """The warm-up's answer is uniform over a, b and the tool's result: they must be three numbers."""
    rows = run.dataset(0)
    assert len(rows) == 32
    for row in rows:
        a, b = (int(x) for x in row["input"].split("+"))
        assert len({a, b, a + b}) == 3 and row["label"] == str(a + b) and a + b < 10


@pytest.fixture(scope="module")
def warmed_up() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The example's policy after its format warm-up (seed 0), built once for this module."""
    torch.manual_seed(0)
    model, tok = run.calculator_policy(0)
    run.format_warmup(model, tok, run.dataset(0))
    return model, tok


def test_the_trainer_sees_the_tool_using_episode_exactly(
    warmed_up: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    """The example's agent on the embedded engine, after the format warm-up: each Sample is the
    conversation the agent had, token for token; the loss mask is 1 on the model's two turns (the
    tool call and the answer) and nowhere else; the rollout log-probs are the policy's own on those
    tokens and 0 elsewhere."""
    model, tok = warmed_up
    rows = run.dataset(0)[:8]
    engine = EmbeddedEngine(model, tok, max_batch_size=8)
    args = Config(custom_agent_function_path="examples.agent_calculator.agent.calculator_agent", max_seq_len=400)

    async def episodes() -> list[Sample]:
        params = SamplingParams(temperature=1.0, max_new_tokens=60)
        with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
            runs = [
                run_agent(args, Sample(index=i, prompt=r["input"], label=r["label"]), params, calculator_agent)
                for i, r in enumerate(rows)
            ]
            return [s for out in await asyncio.gather(*runs) for s in out]

    samples = asyncio.run(episodes())
    with_tool = [
        s
        for s in samples
        if s.metadata.get("tool_calls") == 1 and s.metadata["agent_turns"] == 2 and len(s.metadata["answer"]) == 1
        and s.metadata["answer"].isdigit()
    ]
    assert with_tool, [s.response for s in samples]
    for s in with_tool:
        a, b = (int(x) for x in s.prompt.split("+"))
        ids, labels = run._conversation(tok, a, b, int(s.metadata["answer"]))
        assert s.tokens == ids  # the warm-up's rendering of the same conversation, token for token
        assert [int(label != -100) for label in labels[s.prompt_length :]] == s.loss_mask
        with torch.no_grad():
            logits = model(torch.tensor([s.tokens])).logits[0].float()
        own = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(s.tokens[1:])[:, None])[:, 0]
        own = own[s.prompt_length - 1 :]
        mask = torch.tensor(s.loss_mask, dtype=torch.bool)
        rollout = torch.tensor(s.rollout_log_probs)
        torch.testing.assert_close(rollout[mask], own[mask], atol=1e-4, rtol=0)
        assert not rollout[~mask].any()


def test_a_short_run_learns_to_answer_with_the_tools_result(
    tmp_path: object, warmed_up: tuple[PreTrainedModel, PreTrainedTokenizerFast]
) -> None:
    """The example, shortened: after the format warm-up the policy answers with the tool's result
    one time in three; a few GRPO rollouts through the agent endpoint raise that, and the trainer's
    log-probs on the recorded tokens match the engine's on every rollout (on-policy)."""
    model, tok = warmed_up
    result = run.train(RUN_ROLLOUTS, str(tmp_path), seed=0, warmup_steps=0, policy=(copy.deepcopy(model), tok))
    gaps = [m["train/train_rollout_logprob_abs_diff"] for m in result.history]
    assert max(gaps) < 1e-4, gaps
    assert 0.25 < result.answer_probability_before < 0.42
    assert result.answer_probability_after > result.answer_probability_before + 0.15, (
        result.answer_probability_before,
        result.answer_probability_after,
    )
