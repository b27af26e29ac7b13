"""The chat endpoint against the real ``openai`` client: what it returns is what the session records."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI

from miles_sdk.agents import AgentEndpoint

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "add two integers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            },
        },
    }
]


def client_for(endpoint: AgentEndpoint, session_id: str | None = None) -> AsyncOpenAI:
    base = f"{endpoint.url}/sessions/{session_id}/v1" if session_id else f"{endpoint.url}/v1"
    return AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)


async def test_models_and_unrecorded_chat(endpoint: AgentEndpoint) -> None:
    client = client_for(endpoint)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["policy"]
    reply = await client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0.0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens == len(
        reply.choices[0].model_extra["token_ids"]
    )


async def test_session_records_exactly_the_tokens_the_client_was_sent(endpoint: AgentEndpoint) -> None:
    session = endpoint.sessions.create()
    client = client_for(endpoint, session.id)
    messages: list[dict[str, object]] = [{"role": "user", "content": "1+2="}]
    reply = await client.chat.completions.create(
        model="policy",
        messages=messages,
        max_tokens=8,
        logprobs=True,
        seed=3,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    (record,) = session.records
    extra = choice.model_extra or {}
    assert record.output_ids == extra["token_ids"]
    assert record.prompt_ids == (reply.model_extra or {})["prompt_token_ids"]
    assert record.log_probs == pytest.approx([t.logprob for t in choice.logprobs.content])
    assert record.weight_version == extra["weight_version"] == endpoint.engine.weight_version
    # The prompt is the chat template's rendering, tokenised once.
    text = endpoint.renderer.render(messages, None, generation=True)  # type: ignore[arg-type]
    assert record.prompt_ids == endpoint.renderer.encode(text)

    # Turn 2 extends turn 1 token for token: the engine's ids, never a re-tokenisation of the reply.
    messages += [choice.message.model_dump(exclude_none=True), {"role": "user", "content": "again"}]
    await client.chat.completions.create(model="policy", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    first, second = session.records
    assert second.trajectory == first.trajectory == 0
    assert (
        second.prompt_ids[: len(first.prompt_ids) + len(first.output_ids)]
        == first.prompt_ids + first.output_ids
    )
    # What was inserted between the turns decodes to the template's text for the new message.
    inserted = endpoint.renderer.decode(second.prompt_ids[len(first.prompt_ids) + len(first.output_ids) :])
    assert inserted.endswith("<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")


async def test_streaming_matches_the_recorded_turn(endpoint: AgentEndpoint) -> None:
    session = endpoint.sessions.create()
    client = client_for(endpoint, session.id)
    stream = await client.chat.completions.create(
        model="policy",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    (record,) = session.records
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens == len(record.output_ids)
    assert content == endpoint.renderer.decode(record.output_ids).removesuffix("<|im_end|>")


async def test_n_choices_are_each_recorded(endpoint: AgentEndpoint) -> None:
    session = endpoint.sessions.create()
    client = client_for(endpoint, session.id)
    reply = await client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": "x"}], max_tokens=4, n=3, seed=1
    )
    assert len(reply.choices) == 3
    assert sorted(r.trajectory for r in session.records) == [0, 1, 2]
    assert session.records[-1].output_ids == (reply.choices[0].model_extra or {})["token_ids"]


async def test_concurrent_sessions_stay_apart(endpoint: AgentEndpoint) -> None:
    sessions = [endpoint.sessions.create() for _ in range(4)]

    async def chat(i: int) -> list[int]:
        reply = await client_for(endpoint, sessions[i].id).chat.completions.create(
            model="policy", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=5, seed=i
        )
        return list((reply.choices[0].model_extra or {})["token_ids"])

    outs = await asyncio.gather(*(chat(i) for i in range(4)))
    for session, out in zip(sessions, outs, strict=True):
        (record,) = session.records
        assert record.output_ids == out


async def test_bad_requests_get_a_clear_400(endpoint: AgentEndpoint) -> None:
    session = endpoint.sessions.create()
    client = client_for(endpoint, session.id)
    with pytest.raises(openai.BadRequestError, match="role"):
        await client.chat.completions.create(model="p", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item,misc]
    with pytest.raises(openai.BadRequestError, match="not among tools"):
        await client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": "x"}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "sub"}},
        )
    with pytest.raises(openai.BadRequestError, match="max_seq_len"):
        await client.chat.completions.create(model="p", messages=[{"role": "user", "content": "7" * 600}])
    assert session.records == []
    with pytest.raises(openai.NotFoundError, match="no session"):
        await client_for(endpoint, "nope").chat.completions.create(
            model="p", messages=[{"role": "user", "content": "x"}]
        )


async def test_a_cancelled_request_is_not_recorded(endpoint: AgentEndpoint) -> None:
    session = endpoint.sessions.create()
    client = client_for(endpoint, session.id)
    task = asyncio.create_task(
        client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=200,
            extra_body={"ignore_eos": True},
        )
    )
    # Cancel while the turn is being generated (the session's lock is held then): a fixed sleep
    # raced the generation on a loaded machine, which sometimes finished first.
    for _ in range(1000):
        if session.lock.locked():
            break
        await asyncio.sleep(0.005)
    assert session.lock.locked(), "the request never started generating"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with session.lock:  # the turn still being generated finishes, then is dropped
        pass
    assert session.records == [] and session.discarded == 1


async def test_tool_calls_are_parsed_and_echo_extends_the_trajectory(endpoint: AgentEndpoint) -> None:
    """A scripted 'model' reply with a tool call: the endpoint's parse and the next turn's tokens."""
    tok = endpoint.renderer.tokenizer
    call_text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'
    forced = tok.encode(call_text, add_special_tokens=False)

    class Scripted:
        weight_version = 0

        async def generate(self, input_ids: list[int], params: object) -> object:
            from miles_sdk.engines.base import EngineOutput, FinishReason

            return EngineOutput(forced, [-0.5] * len(forced), FinishReason.STOP, 0)

    scripted = AgentEndpoint(Scripted(), tok, max_seq_len=512)  # type: ignore[arg-type]
    await scripted.start()
    try:
        session = scripted.sessions.create()
        client = client_for(scripted, session.id)
        messages: list[dict[str, object]] = [{"role": "user", "content": "1+2?"}]
        reply = await client.chat.completions.create(model="p", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
        (call,) = choice.message.tool_calls
        assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 1, "b": 2}
        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "3"},
        ]
        await client.chat.completions.create(model="p", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        first, second = session.records
        assert second.trajectory == 0
        joined = first.prompt_ids + first.output_ids
        assert second.prompt_ids[: len(joined)] == joined
        inserted = scripted.renderer.decode(second.prompt_ids[len(joined) :])
        assert (
            inserted
            == "\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        )

        # A call to a tool the request did not offer comes back as text.
        reply = await client_for(scripted).chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": "x"}],
            tools=[{**TOOLS[0], "function": {"name": "mul"}}],  # type: ignore[list-item]
        )
        assert reply.choices[0].message.tool_calls is None
        assert "<tool_call>" in (reply.choices[0].message.content or "")
    finally:
        await scripted.close()
