"""serve_rollout: each rollout_engine / use_miles_router combination ends with args pointing at a live API."""

from __future__ import annotations

import aiohttp
import pytest

from miles_sdk.config import Config
from miles_sdk.engines.http_client import HttpEngine
from miles_sdk.engines.http_server import start_server
from miles_sdk.router import PrefixCacheMiddleware, Router, serve_rollout
from miles_sdk.testing import ScriptedEngine


async def _generate_via_args(args: Config) -> list[int]:
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"input_ids": [1], "return_logprob": True}) as resp,
    ):
        reply = await resp.json()
    return [item[1] for item in reply["meta_info"]["output_token_logprobs"]]


async def test_embedded_engine_is_served_directly() -> None:
    engine = ScriptedEngine([4])
    serving = await serve_rollout(Config(), engine)
    try:
        assert serving.engine is engine and serving.router is None
        assert await _generate_via_args(serving.args) == [4]
    finally:
        await serving.close()


async def test_miles_router_wraps_the_engine() -> None:
    engine = ScriptedEngine([4])
    cache = PrefixCacheMiddleware()
    serving = await serve_rollout(Config(use_miles_router=True), engine, middlewares=[cache])
    try:
        assert isinstance(serving.engine, Router)
        assert await _generate_via_args(serving.args) == [4]
        assert (await serving.engine.generate([1, 2], {})).token_ids == [4]
        assert cache.stats.requests == 2
    finally:
        await serving.close()


async def test_http_engine_and_router_over_a_remote_server() -> None:
    remote = ScriptedEngine([8])
    async with await start_server(remote) as server:
        base = Config(rollout_engine="http", sglang_router_ip=server.host, sglang_router_port=server.port)
        direct = await serve_rollout(base)
        assert isinstance(direct.engine, HttpEngine) and direct.args is base
        assert (await direct.engine.generate([1], {})).token_ids == [8]
        await direct.close()

        routed = await serve_rollout(base.replace(use_miles_router=True))
        try:
            assert routed.args.sglang_router_port != server.port
            assert await _generate_via_args(routed.args) == [8]
        finally:
            await routed.close()
    assert len(remote.requests) == 2


async def test_missing_settings_are_named() -> None:
    with pytest.raises(ValueError, match="sglang_router_ip and sglang_router_port"):
        await serve_rollout(Config(rollout_engine="http"))
    with pytest.raises(ValueError, match="needs the engine"):
        await serve_rollout(Config())
