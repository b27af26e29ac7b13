"""HttpEngine against our own server: round trip, failover, retries, abort, versions, parsing."""

from __future__ import annotations

import asyncio
import socket

import pytest

from miles_sdk.engines.base import FinishReason, InferenceEngine
from miles_sdk.engines.http_client import HttpEngine, HttpEngineError, parse_generate_response
from miles_sdk.engines.http_server import start_server
from miles_sdk.testing import ScriptedEngine


def _dead_url() -> str:
    # A port that was free a moment ago: connections to it are refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_round_trip() -> None:
    engine = ScriptedEngine([7, 8, 9], log_probs=[-1.0, -2.0, -3.0], weight_version=4)
    async with await start_server(engine) as server, HttpEngine(server.url) as client:
        assert isinstance(client, InferenceEngine)
        out = await client.generate([1, 2], {"max_new_tokens": 2, "temperature": 0.0})
    assert out.token_ids == [7, 8]
    assert out.log_probs == [-1.0, -2.0]
    assert out.finish_reason is FinishReason.LENGTH
    assert out.weight_version == 4
    assert engine.requests[0].input_ids == [1, 2]
    assert engine.requests[0].sampling_params == {"max_new_tokens": 2, "temperature": 0.0}


async def test_fails_over_from_a_dead_server() -> None:
    engine = ScriptedEngine([3])
    async with (
        await start_server(engine) as server,
        HttpEngine([_dead_url(), server.url], max_retries=2, retry_backoff=0.01) as client,
    ):
        outs = [await client.generate([1], {}) for _ in range(3)]
    assert [o.token_ids for o in outs] == [[3]] * 3
    assert len(engine.requests) == 3


async def test_gives_up_with_the_urls_named() -> None:
    url = _dead_url()
    async with HttpEngine(url, max_retries=1, retry_backoff=0.01) as client:
        with pytest.raises(HttpEngineError, match=rf"failed after 2 attempts.*{url.split(':')[1]}"):
            await client.generate([1], {})


async def test_server_error_is_not_retried() -> None:
    engine = ScriptedEngine([3])
    async with await start_server(engine) as server, HttpEngine(server.url, max_retries=3) as client:
        with pytest.raises(HttpEngineError, match="HTTP 400.*'min_p'"):
            await client.generate([1], {"min_p": 0.5})  # type: ignore[typeddict-unknown-key]
    assert engine.requests == []


async def test_abort_all_over_http() -> None:
    engine = ScriptedEngine(list(range(1, 100)), delays=0.03)
    async with await start_server(engine) as server, HttpEngine(server.url) as client:
        task = asyncio.create_task(client.generate([1], {}))
        while engine.in_flight == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await client.abort_all()
        out = await task
    assert out.finish_reason is FinishReason.ABORT
    assert 0 < len(out.token_ids) < 99 and len(out.log_probs) == len(out.token_ids)


async def test_update_weights_reaches_the_server_before_the_next_request() -> None:
    engine = ScriptedEngine([3])
    async with await start_server(engine) as server, HttpEngine(server.url) as client:
        client.update_weights(5)
        assert client.weight_version == 5 and engine.weight_version == 0  # not sent yet
        out = await client.generate([1], {})
        assert engine.weight_version == 5 and out.weight_version == 5
        client.update_weights()
        await client.generate([1], {})
        assert engine.requests[-1].weight_version == 6


def test_parse_errors_name_the_key() -> None:
    with pytest.raises(HttpEngineError, match="no 'meta_info'"):
        parse_generate_response({"text": ""}, source="s")
    with pytest.raises(HttpEngineError, match="return_logprob"):
        parse_generate_response({"meta_info": {"finish_reason": {"type": "stop"}}})
    with pytest.raises(HttpEngineError, match="'eos'.*stop/length/abort"):
        parse_generate_response(
            {"meta_info": {"finish_reason": {"type": "eos"}, "output_token_logprobs": []}}
        )
    with pytest.raises(HttpEngineError, match=r"output_token_logprobs\[1\]"):
        parse_generate_response(
            {
                "meta_info": {
                    "finish_reason": "stop",
                    "output_token_logprobs": [[-1.0, 2, None], [None, 3, None]],
                }
            }
        )
    out = parse_generate_response(
        {
            "text": "x",
            "meta_info": {
                "finish_reason": {"type": "stop", "matched": 2},
                "weight_version": "default",
                "output_token_logprobs": [[-0.25, 2, None]],
            },
        },
        default_version=9,
    )
    assert (out.token_ids, out.log_probs, out.weight_version, out.text) == ([2], [-0.25], 9, "x")
