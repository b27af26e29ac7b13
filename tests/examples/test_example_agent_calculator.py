"""examples/agent_calculator: the environment, the reward, the warm-up's token split, one real step."""

from __future__ import annotations

import asyncio

from examples.agent_calculator import run
from examples.agent_calculator.agent import ADD_TOOL, reward_fn, run_tool
from miles_sdk.agents import AgentEndpoint
from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.testing import tiny_tokenizer
from miles_sdk.types import Sample


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
        from examples.agent_calculator.agent import calculator_agent

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
    history = run.train(1, str(tmp_path), warmup_steps=2, rollout_batch_size=1, preset="unit", dynamic_sampling=False)
    assert len(history) == 1 and "rollout/reward_mean" in history[0]
