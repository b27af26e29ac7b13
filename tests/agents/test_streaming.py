"""Streaming token by token: the engine reports tokens as the scheduler gets them, the endpoint
sends the content as it comes (never text that the finished turn would not start with)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch
from openai import AsyncOpenAI
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.agents import AgentEndpoint
from miles_sdk.agents.requests import parse_chat_request
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.testing import tiny_policy

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


class Gated:
    """A 'model' that streams ``first``, then waits for :attr:`release` before the rest."""

    weight_version = 0

    def __init__(self, tok: PreTrainedTokenizerFast, first: str, rest: str) -> None:
        self.first = tok.encode(first, add_special_tokens=False)
        self.rest = tok.encode(rest, add_special_tokens=False)
        self.release = asyncio.Event()
        self.finished = False

    async def generate(self, input_ids: list[int], params: SamplingParams) -> EngineOutput:
        raise AssertionError("a streamed request must use generate_stream")

    async def generate_stream(
        self, input_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[list[int] | EngineOutput]:
        yield self.first
        await self.release.wait()
        for token in self.rest:
            yield [token]
        ids = self.first + self.rest
        self.finished = True
        yield EngineOutput(ids, [-0.5] * len(ids), FinishReason.STOP, 0)


async def _gated_endpoint(engine: Gated, tok: PreTrainedTokenizerFast) -> AgentEndpoint:
    endpoint = AgentEndpoint(engine, tok, max_seq_len=512)  # type: ignore[arg-type]
    await endpoint.start()
    return endpoint


async def test_content_arrives_before_the_turn_is_generated(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    """The first words reach the client while the engine is still generating (it waits for the
    test), and the streamed turn is recorded like any other."""
    _, tok = policy
    engine = Gated(tok, "Hello", " world<|im_end|>")
    endpoint = await _gated_endpoint(engine, tok)
    try:
        session = endpoint.sessions.create()
        client = AsyncOpenAI(base_url=f"{endpoint.session_url(session)}/v1", api_key="-", max_retries=0)
        stream = await client.chat.completions.create(
            model="p", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(stream)
        assert (await anext(chunks)).choices[0].delta.role == "assistant"
        early = await asyncio.wait_for(anext(chunks), timeout=30)
        assert early.choices[0].delta.content == "Hello" and not engine.finished
        engine.release.set()
        content, finish = "Hello", None
        async for chunk in chunks:
            for c in chunk.choices:
                content += c.delta.content or ""
                finish = c.finish_reason or finish
        assert content == "Hello world" and finish == "stop"
        (record,) = session.records
        assert record.output_ids == engine.first + engine.rest
    finally:
        await endpoint.close()


async def test_a_streamed_tool_call_is_sent_parsed_never_as_text(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    engine = Gated(
        tok, "Let me add.\n<tool", '_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>'
    )
    endpoint = await _gated_endpoint(engine, tok)
    try:
        client = AsyncOpenAI(base_url=f"{endpoint.url}/v1", api_key="-", max_retries=0)
        stream = await client.chat.completions.create(
            model="p",
            messages=[{"role": "user", "content": "1+?"}],
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
        chunks = aiter(stream)
        await anext(chunks)  # the role
        early = await asyncio.wait_for(anext(chunks), timeout=30)
        # Sent before the rest exists: the content up to the call, without the whitespace that
        # the parsed turn strips or the start of the tag.
        assert early.choices[0].delta.content == "Let me add." and not engine.finished
        engine.release.set()
        content, calls, finish = "Let me add.", [], None
        async for chunk in chunks:
            for c in chunk.choices:
                content += c.delta.content or ""
                calls += c.delta.tool_calls or []
                finish = c.finish_reason or finish
        assert content == "Let me add." and finish == "tool_calls"
        (call,) = calls
        assert call.function is not None and call.function.name == "add"
        assert json.loads(call.function.arguments or "") == {"a": 1}
    finally:
        await endpoint.close()


def test_only_text_the_finished_turn_starts_with_is_sendable(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    endpoint = AgentEndpoint(None, tok)  # type: ignore[arg-type]
    plain = parse_chat_request(
        {"messages": [{"role": "user", "content": "x"}], "stop": ["END"]}, default_model="p"
    )
    tools = parse_chat_request(
        {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}, default_model="p"
    )
    assert endpoint._sendable(plain, "abc<|im_") == "abc"  # maybe the EOS marker, trimmed at the end
    assert endpoint._sendable(plain, "abc EN") == "abc "  # maybe the stop string
    assert endpoint._sendable(plain, "ab\ufffd") == "ab"  # a character still being decoded
    assert endpoint._sendable(plain, "  a b") == "  a b"
    assert endpoint._sendable(tools, "  a b") == ""  # stripped if a call follows
    assert endpoint._sendable(tools, "a b \n") == "a b"
    assert endpoint._sendable(tools, "a <tool_ca") == "a"
    assert endpoint._sendable(tools, 'a <tool_call>{"name"') == "a"


async def test_the_embedded_engine_streams_what_it_generates(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    """Several pieces (one per model step here), adding up to the finished output; closing the
    stream early cancels the request and the engine serves the next one."""
    model, tok = policy
    engine = EmbeddedEngine(model, tok, max_batch_size=4)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True, sampling_seed=3)
    pieces: list[list[int]] = []
    out: EngineOutput | None = None
    async for item in engine.generate_stream([1, 2, 3], params):
        if isinstance(item, EngineOutput):
            out = item
        else:
            pieces.append(item)
    assert out is not None and len(out.token_ids) == 8 and len(pieces) > 1
    assert [t for piece in pieces for t in piece] == out.token_ids[: sum(map(len, pieces))]
    assert out.token_ids == (await engine.generate([1, 2, 3], params)).token_ids

    stream = engine.generate_stream([1, 2, 3], SamplingParams(max_new_tokens=200, ignore_eos=True))
    first: Any = await anext(stream)
    assert isinstance(first, list)
    await stream.aclose()  # type: ignore[attr-defined]
    again = await asyncio.wait_for(engine.generate([4, 5], SamplingParams(max_new_tokens=3)), timeout=30)
    assert len(again.token_ids) <= 3


async def test_the_embedded_engine_streams_through_the_endpoint(endpoint: AgentEndpoint) -> None:
    """The conftest's endpoint (embedded engine, tiny policy): more than one content chunk for a
    multi-token reply, adding up to the recorded turn."""
    session = endpoint.sessions.create()
    client = AsyncOpenAI(base_url=f"{endpoint.session_url(session)}/v1", api_key="-", max_retries=0)
    stream = await client.chat.completions.create(
        model="p",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [c.delta.content async for chunk in stream for c in chunk.choices if c.delta.content]
    (record,) = session.records
    assert "".join(pieces) == endpoint.renderer.decode(record.output_ids).removesuffix("<|im_end|>")
    assert len(pieces) > 1


async def test_a_client_that_leaves_mid_stream_is_not_recorded(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    engine = Gated(tok, "Hello", " world, and more<|im_end|>")
    endpoint = await _gated_endpoint(engine, tok)
    try:
        session = endpoint.sessions.create()
        client = AsyncOpenAI(base_url=f"{endpoint.session_url(session)}/v1", api_key="-", max_retries=0)
        stream = await client.chat.completions.create(
            model="p", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = aiter(stream)
        await anext(chunks)
        assert (await asyncio.wait_for(anext(chunks), timeout=30)).choices[0].delta.content == "Hello"
        await stream.close()
        engine.release.set()
        for _ in range(1000):  # the server notices when it next writes
            if session.discarded:
                break
            await asyncio.sleep(0.01)
        async with session.lock:
            pass
        assert session.records == [] and session.discarded == 1
    finally:
        await endpoint.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fast path)")
async def test_the_fast_path_streams_its_decode_chunks() -> None:
    """On a GPU the fast path decodes in chunks: pieces come several tokens at a time and add up
    to the output, which equals a plain generate with the same seed."""
    model, tok = tiny_policy("arithmetic", seed=0)
    engine = EmbeddedEngine(model.to("cuda"), tok, max_batch_size=4)
    assert engine.fast_path
    params = SamplingParams(max_new_tokens=64, ignore_eos=True, sampling_seed=5)
    pieces: list[list[int]] = []
    out: EngineOutput | None = None
    async for item in engine.generate_stream([1, 2, 3], params):
        if isinstance(item, EngineOutput):
            out = item
        else:
            pieces.append(item)
    assert out is not None and len(out.token_ids) == 64
    assert len(pieces) > 1 and max(map(len, pieces)) > 1
    assert [t for piece in pieces for t in piece] == out.token_ids[: sum(map(len, pieces))]
    assert out.token_ids == (await engine.generate([1, 2, 3], params)).token_ids
