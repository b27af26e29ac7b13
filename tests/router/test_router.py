"""Router: least-active choice, failover and recovery, middleware order, prefix cache, abort, HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from miles_sdk.engines.base import FinishReason, SamplingParams
from miles_sdk.engines.http_client import HttpEngine
from miles_sdk.engines.http_server import EngineService, serve_app, start_server
from miles_sdk.hooks import RouterMiddleware, RouterRequest, RouterResponse
from miles_sdk.router import ROUTE_TO, PrefixCacheMiddleware, Router, RouterError, start_router_server
from miles_sdk.testing import ScriptedEngine

Next = Callable[[RouterRequest], Awaitable[RouterResponse]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(router: Router) -> tuple[bool, int]:
    first = router.workers[0]
    return first.healthy, first.failures


async def test_least_active_engine_gets_the_request() -> None:
    slow = ScriptedEngine([1] * 20, delays=0.02)  # 20 tokens: long in flight
    fast = ScriptedEngine([2])
    router = Router([slow, fast], health_check_interval=None)
    long_request = asyncio.create_task(router.generate([0], {}))
    while slow.in_flight == 0:
        await asyncio.sleep(0.005)
    # slow has 1 active, fast 0: each short request goes to fast.
    outs = [await router.generate([0], {}) for _ in range(3)]
    assert [o.token_ids for o in outs] == [[2]] * 3
    await long_request
    assert (len(slow.requests), len(fast.requests)) == (1, 3)
    # Idle again: ties go to the first engine.
    assert (await router.generate([0], {})).token_ids == [1] * 20


async def test_concurrent_requests_spread_evenly() -> None:
    engines = [ScriptedEngine([i], delays=0.02) for i in range(3)]
    router = Router(engines, health_check_interval=None)
    await asyncio.gather(*(router.generate([0], {}) for _ in range(9)))
    assert [len(e.requests) for e in engines] == [3, 3, 3]


async def test_failover_out_of_rotation_and_back() -> None:
    alive = ScriptedEngine([1])
    flaky_engine = ScriptedEngine([2])
    port = _free_port()
    server_a = await start_server(alive)
    server_b = await start_server(flaky_engine, port=port)
    router = Router([server_b.url, server_a.url], failure_threshold=2, health_check_interval=None)
    try:
        assert (await router.generate([0], {})).token_ids == [2]  # first engine while healthy
        await server_b.close()
        # The dead engine is tried, fails, and the request goes on to the live one.
        assert (await router.generate([0], {})).token_ids == [1]
        assert _state(router) == (True, 1)
        await router.check_health()  # second failure: out of rotation
        assert _state(router) == (False, 2)
        assert (await router.generate([0], {})).token_ids == [1]
        assert _state(router) == (False, 2)  # not tried any more
        server_b = await start_server(flaky_engine, port=port)
        assert (await router.check_health()) == {server_b.url: True, server_a.url: True}
        assert (await router.generate([0], {})).token_ids == [2]
    finally:
        await router.close()
        await server_a.close()
        await server_b.close()


async def test_middlewares_run_in_order() -> None:
    log: list[str] = []

    def tagged(name: str) -> RouterMiddleware:
        async def middleware(request: RouterRequest, call_next: Next, /) -> RouterResponse:
            log.append(f"{name}>")
            request = {**request, "input_ids": request["input_ids"] + [len(log)]}
            reply = await call_next(request)
            log.append(f"<{name}")
            reply["meta_info"].setdefault("seen_by", []).append(name)
            return reply

        return middleware

    engine = ScriptedEngine([9])
    router = Router([engine], middlewares=[tagged("outer"), tagged("inner")], health_check_interval=None)
    reply = await router.route({"input_ids": [5], "sampling_params": {}, "return_logprob": True})
    assert log == ["outer>", "inner>", "<inner", "<outer"]
    assert reply["meta_info"]["seen_by"] == ["inner", "outer"]
    assert engine.requests[0].input_ids == [5, 1, 2]


async def test_prefix_cache_answers_repeated_greedy_requests() -> None:
    engine = ScriptedEngine(lambda ids: [len(ids)])
    cache = PrefixCacheMiddleware()
    router = Router([engine], middlewares=[cache], health_check_interval=None)
    greedy: SamplingParams = {"temperature": 0.0, "max_new_tokens": 4}
    first = await router.generate([1, 2, 3], greedy)
    second = await router.generate([1, 2, 3], greedy)
    assert first == second and len(engine.requests) == 1
    reply = await router.route({"input_ids": [1, 2, 3], "sampling_params": greedy, "return_logprob": True})
    assert reply["meta_info"]["router_cache_hit"] is True
    # Sampled requests, other params, and other prompts all reach the engine.
    await router.generate([1, 2, 3], {"temperature": 1.0})
    await router.generate([1, 2, 3], {"temperature": 0.0, "max_new_tokens": 5})
    extended = await router.route(
        {"input_ids": [1, 2, 4, 4], "sampling_params": greedy, "return_logprob": True}
    )
    assert len(engine.requests) == 4
    assert extended["meta_info"]["router_prefix_hit_tokens"] == 2
    assert (cache.stats.cache_hits, cache.stats.cache_misses, cache.stats.uncacheable) == (2, 3, 1)
    assert cache.stats.prompt_tokens == 3 * 5 + 4 and cache.stats.prefix_hit_tokens == 3 * 4 + 2
    # New weights: the stored replies are stale.
    router.update_weights()
    assert len(cache) == 0 and engine.weight_version == 1
    out = await router.generate([1, 2, 3], greedy)
    assert len(engine.requests) == 5 and out.weight_version == 1


async def test_abort_reaches_every_engine() -> None:
    engines = [ScriptedEngine(list(range(1, 100)), delays=0.02) for _ in range(2)]
    router = Router(engines, health_check_interval=None)
    tasks = [asyncio.create_task(router.generate([0], {})) for _ in range(2)]
    while sum(e.in_flight for e in engines) < 2:
        await asyncio.sleep(0.005)
    await router.abort_all()
    outs = await asyncio.gather(*tasks)
    assert all(o.finish_reason is FinishReason.ABORT for o in outs)
    assert [e.abort_calls for e in engines] == [1, 1]


async def test_router_server_speaks_sglang_http() -> None:
    local = ScriptedEngine([4, 5], delays=0.01)
    remote = ScriptedEngine([6])
    async with await start_server(remote) as remote_server:
        router = Router(
            [local, remote_server.url], middlewares=[PrefixCacheMiddleware()], health_check_interval=None
        )
        server = await start_router_server(router)
        try:
            async with HttpEngine(server.url) as client:
                out = await client.generate([1], {"max_new_tokens": 1})
                assert out.token_ids == [4] and out.log_probs == [-0.5]
                client.update_weights(3)  # broadcast through the router to both engines
                await client.generate([1], {})
                assert local.weight_version == 3 and remote.weight_version == 3
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{server.url}/generate", json={"input_ids": [[1], [2]]}) as resp:
                    batch: list[dict[str, Any]] = await resp.json()
                assert len(batch) == 2 and all("output_ids" in r for r in batch)
                async with session.get(f"{server.url}/list_workers") as resp:
                    workers = await resp.json()
                assert workers["urls"][1] == remote_server.url
                assert [w["requests"] for w in workers["workers"]] == [3, 1]
                async with session.get(f"{server.url}/health") as resp:
                    assert resp.status == 200
        finally:
            await server.close()
            await router.close()


async def test_no_engine_left_is_a_503() -> None:
    router = Router([f"http://127.0.0.1:{_free_port()}"], failure_threshold=1, health_check_interval=None)
    server = await start_router_server(router)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/generate", json={"input_ids": [1]}) as resp:
                assert resp.status == 503
                assert "no healthy engine" in (await resp.json())["error"]["message"]
            async with session.get(f"{server.url}/health") as resp:
                assert resp.status == 503
    finally:
        await server.close()
        await router.close()


async def test_middleware_can_pick_the_engine() -> None:
    engines = [ScriptedEngine([0]), ScriptedEngine([1])]

    async def pin_to_second(request: RouterRequest, call_next: Next, /) -> RouterResponse:
        return await call_next({**request, ROUTE_TO: 1})

    # The second engine is a URL whose server records the raw bodies it gets.
    bodies: list[dict[str, Any]] = []
    service = EngineService(engines[1])

    async def record(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response(await service.generate(bodies[-1]))

    app = web.Application()
    app.router.add_post("/generate", record)
    async with await serve_app(app, "127.0.0.1", 0) as recorder:
        router = Router([engines[0], recorder.url], middlewares=[pin_to_second], health_check_interval=None)
        outs = [await router.generate([0], {}) for _ in range(2)]
        await router.close()
    assert [o.token_ids for o in outs] == [[1], [1]]
    assert len(bodies) == 2 and all(ROUTE_TO not in b for b in bodies)

    async def pin_to_unknown(request: RouterRequest, call_next: Next, /) -> RouterResponse:
        return await call_next({**request, ROUTE_TO: "http://nowhere:1"})

    router = Router(engines, middlewares=[pin_to_unknown], health_check_interval=None)
    with pytest.raises(RouterError, match="names no engine"):
        await router.generate([0], {})


async def test_unknown_paths_are_proxied() -> None:
    remote = ScriptedEngine([6], weight_version=2)
    async with await start_server(remote) as remote_server:
        router = Router([remote_server.url], health_check_interval=None)
        server = await start_router_server(router)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{server.url}/get_weight_version") as resp:
                    assert (await resp.json()) == {"weight_version": "2"}
                async with session.get(f"{server.url}/no_such_endpoint") as resp:
                    assert resp.status == 404  # the engine's answer, relayed
        finally:
            await server.close()
            await router.close()
