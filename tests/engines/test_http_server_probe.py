"""External servers are probed when the Trainer starts, before any weights load (issue 18).

With ``--rollout-external --rollout-external-engine-addrs h:p ...`` (or ``rollout_engine="http"``
and ``sglang_router_ip/port``) a wrong port or a server that is down used to be found at the
first rollout, after the model loaded. Now each server is asked ``GET /health`` first; one
still loading (connection refused, or 503 while it warms up) is waited for up to
``rollout_external_wait_timeout``; the error names every server that did not answer and the
flag that listed it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

import miles_sdk.trainer
from miles_sdk import Config, Trainer
from miles_sdk._loop import LoopThread
from miles_sdk.engines.http_server import ServerHandle, serve_app, start_server
from miles_sdk.engines.server_probe import ProbedServer, ServersDownError, probe_servers, wait_for_servers
from miles_sdk.engines.weight_group import free_port
from miles_sdk.testing import ScriptedEngine
from miles_sdk.testing.tiny import tiny_tokenizer

FLAG = "rollout_external_engine_addrs (--rollout-external-engine-addrs)"
RUN = ["--n-samples-per-prompt", "2", "--rm-type", "math"]
DATASET = [{"input": "1+1=", "label": "2"}]


def _dead_url() -> str:
    """A local port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port('127.0.0.1')}"


@pytest.fixture
def live_server() -> Iterator[ServerHandle]:
    """Our SGLang-API server over a scripted engine, on a loop of its own (as a server process)."""
    loop = LoopThread()
    handle = loop.run(start_server(ScriptedEngine("4"), tiny_tokenizer()))
    yield handle
    loop.run(handle.close())
    loop.close()


def _warming_app(busy_answers: int) -> tuple[web.Application, list[int]]:
    """An SGLang-like /health: 503 for the first ``busy_answers`` asks (warming up), then 200."""
    asked: list[int] = []

    async def health(_: web.Request) -> web.Response:
        asked.append(1)
        return web.Response(status=503 if len(asked) <= busy_answers else 200)

    app = web.Application()
    app.router.add_get("/health", health)
    return app, asked


async def test_a_server_still_loading_is_waited_for_not_failed_at_once() -> None:
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"

    async def start_late() -> ServerHandle:
        await asyncio.sleep(1.0)  # connection refused until then, as while SGLang loads its model
        return await start_server(ScriptedEngine("4"), tiny_tokenizer(), port=port)

    late = asyncio.ensure_future(start_late())
    try:
        start = time.monotonic()
        await probe_servers([ProbedServer(url, FLAG)], wait=4.0)
        took = time.monotonic() - start
    finally:
        await (await late).close()
    assert 0.9 <= took < 4.0, f"the probe returned after {took:.1f} s"


async def test_a_server_answering_503_while_it_warms_up_is_asked_again() -> None:
    app, asked = _warming_app(busy_answers=2)
    handle = await serve_app(app, "127.0.0.1", 0)
    try:
        await probe_servers([ProbedServer(handle.url, FLAG)], wait=4.0)
    finally:
        await handle.close()
    assert len(asked) == 3


async def test_every_server_that_did_not_answer_is_named_with_its_flag_and_what_it_got() -> None:
    app, _ = _warming_app(busy_answers=10**6)  # never ready
    warming = await serve_app(app, "127.0.0.1", 0)
    live = await start_server(ScriptedEngine("4"), tiny_tokenizer())
    dead = _dead_url()
    router = "sglang_router_ip/sglang_router_port (--sglang-router-ip/--sglang-router-port)"
    servers = [ProbedServer(live.url, FLAG), ProbedServer(dead, FLAG), ProbedServer(warming.url, router)]
    try:
        start = time.monotonic()
        with pytest.raises(ServersDownError) as info:
            await probe_servers(servers, wait=0.5)
        took = time.monotonic() - start
    finally:
        await live.close()
        await warming.close()
    message = str(info.value)
    assert set(info.value.down) == {dead, warming.url}, message
    assert f"{dead} (listed by {FLAG}): GET /health: ClientConnectorError" in message, message
    assert f"{warming.url} (listed by {router}): GET /health: HTTP 503" in message, message
    assert "2 of 3 server(s) did not answer GET /health within 0.5 s" in message, message
    assert "--rollout-external-wait-timeout" in message, message
    assert took < 3.0, f"gave up after {took:.1f} s"


async def test_something_else_at_the_address_fails_at_once() -> None:
    other = await serve_app(web.Application(), "127.0.0.1", 0)  # answers 404 to everything
    try:
        start = time.monotonic()
        with pytest.raises(ServersDownError, match="answers neither GET /health nor GET /get_model_info"):
            await probe_servers([ProbedServer(other.url, FLAG)], wait=10.0)
        took = time.monotonic() - start
    finally:
        await other.close()
    assert took < 3.0, f"waited {took:.1f} s for a server that answered"


def _no_weights(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the weights started loading before the servers were probed")


def test_the_trainer_names_a_server_that_is_down_before_the_weights_load(
    live_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    dead = _dead_url()
    addrs = [live_server.url.removeprefix("http://"), dead.removeprefix("http://")]
    config = Config.from_args(
        ["--rollout-external", "--rollout-external-engine-addrs", *addrs, "--rollout-external-wait-timeout", "0.3", *RUN]
    )
    start = time.monotonic()
    with pytest.raises(ServersDownError) as info:
        Trainer(config, tokenizer=tiny_tokenizer(), dataset=DATASET)
    took = time.monotonic() - start
    assert list(info.value.down) == [dead], str(info.value)
    assert f"{dead} (listed by {FLAG})" in str(info.value), str(info.value)
    assert took < 4.0, f"the start failed after {took:.1f} s"


def test_the_router_address_of_an_http_engine_is_probed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    port = free_port("127.0.0.1")
    config = Config.from_args(RUN).replace(
        rollout_engine="http", sglang_router_ip="127.0.0.1", sglang_router_port=port,
        rollout_external_wait_timeout=0,
    )
    with pytest.raises(ServersDownError, match=r"port\)\): GET /health: ClientConnectorError"):
        Trainer(config, tokenizer=tiny_tokenizer(), dataset=DATASET)


def test_the_servers_of_an_http_engine_passed_in_are_probed_too(
    live_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trainer(engine=HttpEngine([...])): its servers are asked before the weights load, as the
    ones the Config names are (before, a dead one was found at the first rollout)."""
    from miles_sdk.engines.http_client import HttpEngine

    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    dead = _dead_url()
    engine = HttpEngine([live_server.url, dead], max_retries=0)
    config = Config.from_args(RUN).replace(rollout_external_wait_timeout=0.3)
    with pytest.raises(ServersDownError) as info:
        Trainer(config, tokenizer=tiny_tokenizer(), dataset=DATASET, engine=engine)
    assert list(info.value.down) == [dead], str(info.value)
    assert "Trainer(engine=HttpEngine(...))" in str(info.value) and "passed as Trainer(engine=...)" in str(info.value)


async def test_a_server_on_the_blocked_loop_of_the_caller_is_explained() -> None:
    """A notebook cell that awaits start_server, then builds the Trainer in the same loop: the
    server cannot answer while the Trainer's start blocks that loop; the error says so."""
    handle = await start_server(ScriptedEngine("4"), tiny_tokenizer())
    try:
        with pytest.raises(ServersDownError, match=r"start the Trainer off the loop \(await asyncio.to_thread"):
            wait_for_servers([ProbedServer(handle.url, FLAG)], wait=0.3)
    finally:
        await handle.close()
