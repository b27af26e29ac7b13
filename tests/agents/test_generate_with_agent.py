"""generate_with_agent: an openai-client agent's session becomes Samples with the right loss masks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import torch
from openai import AsyncOpenAI
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.agents import run_agent
from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.types import Sample

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


async def tool_agent(
    *, base_url: str, prompt: Any, request_kwargs: dict[str, Any], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Calls the model, runs its tool calls, calls it again: the shape of every tool-using agent."""
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": prompt}]
    for _ in range(3):
        reply = await client.chat.completions.create(
            model="p", messages=messages, tools=TOOLS, **request_kwargs
        )
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)  # type: ignore[union-attr]
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
    return {"answer": messages[-1].get("content"), "turns": len(messages)}


class ScriptedTurns:
    """An engine that replies with fixed texts in turn (deterministic tool calls)."""

    def __init__(self, tok: PreTrainedTokenizerFast, replies: list[str]) -> None:
        self.tok, self.replies, self.weight_version, self.prompts = tok, list(replies), 7, []

    async def generate(self, input_ids: list[int], params: SamplingParams) -> EngineOutput:
        self.prompts.append(list(input_ids))
        full = self.tok.encode(self.replies.pop(0), add_special_tokens=False)
        ids = full[: params.get("max_new_tokens", len(full))]
        lps = [-0.1 * (i + 1) for i in range(len(ids))]
        finish = FinishReason.STOP if len(ids) == len(full) else FinishReason.LENGTH
        return EngineOutput(ids, lps, finish, self.weight_version)


async def _run(
    args: Config, engine: Any, tok: PreTrainedTokenizerFast, agent: Any, prompt: str = "1+2?"
) -> list[Sample]:
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        params = SamplingParams(temperature=1.0, max_new_tokens=64)
        return await run_agent(args, Sample(index=0, prompt=prompt, metadata={"k": 1}), params, agent)


async def test_tool_turns_merge_into_one_sample_with_tool_output_masked(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'
    engine = ScriptedTurns(tok, [call, "3<|im_end|>"])
    (sample,) = await _run(Config(), engine, tok, tool_agent)
    assert sample.status is Sample.Status.COMPLETED
    assert (
        sample.metadata["answer"] == "3" and sample.metadata["k"] == 1 and sample.metadata["agent_turns"] == 2
    )
    # Tokens: the first prompt, then exactly what the engine saw on the second call, then its reply.
    first_prompt, second_prompt = engine.prompts
    assert sample.tokens[: len(second_prompt)] == second_prompt
    assert sample.prompt_length == len(first_prompt)
    call_ids = tok.encode(call, add_special_tokens=False)
    answer_ids = tok.encode("3<|im_end|>", add_special_tokens=False)
    between = len(second_prompt) - len(first_prompt) - len(call_ids)
    assert sample.loss_mask == [1] * len(call_ids) + [0] * between + [1] * len(answer_ids)
    masked_text = tok.decode(sample.tokens[len(first_prompt) + len(call_ids) : len(second_prompt)])
    assert "<tool_response>\n3\n</tool_response>" in masked_text  # the tool output is never trained on
    assert sample.rollout_log_probs is not None
    assert sample.rollout_log_probs[: len(call_ids)] == [-0.1 * (i + 1) for i in range(len(call_ids))]
    assert sample.weight_versions == [7, 7]
    sample.validate()


async def test_an_agent_that_raises_or_hangs_gives_a_failed_sample(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy

    async def broken(**_: Any) -> None:
        raise RuntimeError("environment down")

    async def hangs(**_: Any) -> None:
        await asyncio.sleep(60)

    (failed,) = await _run(Config(), ScriptedTurns(tok, []), tok, broken)
    assert failed.status is Sample.Status.FAILED
    assert "RuntimeError: environment down" in failed.metadata["agent_error"]
    (late,) = await _run(Config(agent_timeout=0.2), ScriptedTurns(tok, []), tok, hangs)
    assert late.status is Sample.Status.FAILED and "agent_timeout=0.2" in late.metadata["agent_error"]

    async def silent(**_: Any) -> None:
        return None

    (empty,) = await _run(Config(), ScriptedTurns(tok, []), tok, silent)
    assert empty.status is Sample.Status.ABORTED and "no model call" in empty.metadata["agent_error"]


async def test_max_seq_len_caps_the_turn_and_truncates(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    engine = ScriptedTurns(tok, ["7" * 50])
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, tools=TOOLS
    )
    prompt_len = len(tok.encode(str(text), add_special_tokens=False))

    async def once(
        *, base_url: str, prompt: Any, request_kwargs: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0)
        await client.chat.completions.create(
            model="p", messages=[{"role": "user", "content": prompt}], tools=TOOLS
        )  # type: ignore[arg-type]

    (sample,) = await _run(Config(max_seq_len=prompt_len + 5), engine, tok, once, prompt="hi")
    assert len(sample.tokens) == prompt_len + 5 and sample.response_length == 5
    assert sample.status is Sample.Status.TRUNCATED  # the turn was capped at the budget: finish "length"
    sample.validate()

    async def twice(
        *, base_url: str, prompt: Any, request_kwargs: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0)
        messages: list[Any] = [{"role": "user", "content": prompt}]
        for _ in range(2):  # the second turn's prompt no longer fits: the endpoint refuses it (400)
            reply = await client.chat.completions.create(model="p", messages=messages, tools=TOOLS)
            messages += [
                reply.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "go on"},
            ]

    engine = ScriptedTurns(tok, ["7" * 50, "8"])
    (sample,) = await _run(Config(max_seq_len=prompt_len + 5), engine, tok, twice, prompt="hi")
    assert sample.status is Sample.Status.TRUNCATED and "max_seq_len" in sample.metadata["agent_error"]
    assert sample.response_length == 5 and sample.loss_mask == [1] * 5


async def test_trainer_log_probs_match_the_engines_on_recorded_tokens(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    """Two real turns on the embedded engine: the policy's log-probs on the recorded sample equal the
    engine's where the loss mask is 1 (so training is on-policy: same tokens, same context)."""
    model, tok = policy
    engine = EmbeddedEngine(model, tok, max_batch_size=4)

    async def chatty(
        *, base_url: str, prompt: Any, request_kwargs: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0)
        messages: list[Any] = [{"role": "user", "content": prompt}]
        for turn in range(2):
            reply = await client.chat.completions.create(
                model="p", messages=messages, max_tokens=6, seed=turn
            )
            messages += [
                reply.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "more"},
            ]

    (sample,) = await _run(Config(), engine, tok, chatty)
    assert sample.metadata["agent_turns"] == 2 and 0 in (sample.loss_mask or []) and sample.rollout_log_probs
    with torch.no_grad():
        logits = model(torch.tensor([sample.tokens])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(sample.tokens[1:])[:, None])[:, 0]
    response_lp = lp[sample.prompt_length - 1 :]
    mask = torch.tensor(sample.loss_mask, dtype=torch.bool)
    engine_lp = torch.tensor(sample.rollout_log_probs)
    torch.testing.assert_close(response_lp[mask], engine_lp[mask], atol=1e-4, rtol=1e-4)
