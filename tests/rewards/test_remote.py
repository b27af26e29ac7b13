"""remote_rm against a real aiohttp server on 127.0.0.1: slow, failing, flaky and malformed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from miles_sdk.config import Config
from miles_sdk.rewards import close_remote_clients, remote, score_samples
from miles_sdk.types import Sample

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RewardServer:
    """A reward server whose behaviour each test scripts; records requests and peak load."""

    def __init__(self) -> None:
        self.calls = 0
        self.payloads: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0
        self.behaviour: Handler = self.reply(1.0)
        self.url = ""
        self.release = asyncio.Event()
        """Set at teardown so handlers that wait on it end and shutdown is quick."""

    @staticmethod
    def reply(value: Any, status: int = 200, raw: str | None = None) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = raw if raw is not None else json.dumps(value)
            return web.Response(text=body, status=status, content_type="application/json")

        return handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            self.payloads.append(await request.json())
            return await self.behaviour(request)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RewardServer]:
    monkeypatch.setattr(remote, "DEFAULT_BACKOFF_S", 0.01)
    srv = RewardServer()
    app = web.Application()
    app.router.add_post("/rm", srv.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}/rm"
    yield srv
    srv.release.set()
    await close_remote_clients()
    await runner.cleanup()


def _args(url: str, **kw: Any) -> Config:
    kw.setdefault("rm_type", "remote_rm")
    return Config(rm_url=url, **kw)


async def test_posts_prompt_response_label(server: RewardServer) -> None:
    samples = [Sample(index=0, prompt="2+2?", response="4", label="4")]
    await score_samples(_args(server.url), samples)
    assert samples[0].reward == 1.0
    assert server.payloads == [{"prompt": "2+2?", "response": "4", "label": "4"}]


async def test_dict_reply_and_boxed_prefix(server: RewardServer) -> None:
    server.behaviour = server.reply({"score": 0.5, "detail": "ok"})
    samples = [Sample(prompt="p", response=r"work \boxed{7}", label="7")]
    await score_samples(_args(server.url, rm_type="boxed_remote_rm", reward_key="score"), samples)
    assert samples[0].reward == {"score": 0.5, "detail": "ok"}
    assert server.payloads[0]["response"] == "7"


async def test_slow_server_within_timeout(server: RewardServer) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.json_response(1.0)

    server.behaviour = slow
    samples = [Sample(index=i) for i in range(3)]
    await score_samples(_args(server.url, reward_timeout=5.0), samples)
    assert [s.reward for s in samples] == [1.0] * 3


async def test_server_slower_than_reward_timeout_fails_the_sample(server: RewardServer) -> None:
    async def stuck(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response(1.0)

    server.behaviour = stuck
    samples = [Sample(index=0)]
    await score_samples(_args(server.url, reward_timeout=0.3), samples)
    assert samples[0].status is Sample.Status.FAILED
    assert samples[0].metadata["reward_error"] == "remote_rm: timed out after reward_timeout=0.3s"


async def test_5xx_is_retried_until_success(server: RewardServer) -> None:
    async def recovering(request: web.Request) -> web.StreamResponse:
        if server.calls <= 2:
            return web.Response(status=503, text="busy")
        return web.json_response(0.75)

    server.behaviour = recovering
    samples = [Sample(index=0)]
    await score_samples(_args(server.url), samples)
    assert samples[0].reward == 0.75
    assert server.calls == 3


async def test_permanent_5xx_gives_up_with_the_reason(server: RewardServer) -> None:
    server.behaviour = server.reply(None, status=500, raw="internal boom")
    samples = [Sample(index=0)]
    await score_samples(_args(server.url), samples)
    error = samples[0].metadata["reward_error"]
    assert samples[0].status is Sample.Status.FAILED
    assert error.startswith(f"remote_rm: RemoteRewardError: remote_rm {server.url}: gave up after 4 attempts in ")
    assert "HTTP 500" in error and "internal boom" in error
    assert server.calls == 1 + remote.DEFAULT_MAX_RETRIES


async def test_dropped_connection_is_retried(server: RewardServer) -> None:
    async def flaky(request: web.Request) -> web.StreamResponse:
        if server.calls % 2 == 1:  # every other request loses its connection mid-way
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.json_response(1.0)

    server.behaviour = flaky
    samples = [Sample(index=i) for i in range(4)]
    await score_samples(_args(server.url, reward_concurrency=1), samples)
    assert [s.reward for s in samples] == [1.0] * 4
    assert server.calls == 8


@pytest.mark.parametrize(
    ("status", "raw", "message"),
    [
        (200, "not json", "reply is not JSON: 'not json'"),
        (200, "[1, 2]", "reply must be a JSON number or object, got list"),
        (200, "true", "reply must be a JSON number or object, got bool"),
        (400, '{"error": "bad label"}', "HTTP 400"),
    ],
)
async def test_malformed_replies_fail_without_retry(
    server: RewardServer, status: int, raw: str, message: str
) -> None:
    server.behaviour = server.reply(None, status=status, raw=raw)
    samples = [Sample(index=0)]
    await score_samples(_args(server.url), samples)
    assert samples[0].status is Sample.Status.FAILED
    assert message in samples[0].metadata["reward_error"]
    assert server.calls == 1


async def test_concurrency_limit_and_connection_reuse(server: RewardServer) -> None:
    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.json_response(1.0)

    server.behaviour = slowish
    samples = [Sample(index=i) for i in range(20)]
    await score_samples(_args(server.url, reward_concurrency=4), samples)
    assert all(s.reward == 1.0 for s in samples)
    assert server.peak <= 4


async def test_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "DEFAULT_BACKOFF_S", 0.01)
    samples = [Sample(index=0)]
    try:
        await score_samples(_args("http://127.0.0.1:9/rm"), samples)  # discard port: refused
    finally:
        await close_remote_clients()
    assert samples[0].status is Sample.Status.FAILED
    error = samples[0].metadata["reward_error"]
    assert "gave up after 4 attempts in " in error and "ClientConnectorError" in error


# -- issue 16.9 / 16.10: short attempts, an explicit budget, jitter, progress while waiting ------


def test_default_attempt_timeout_is_short_and_budget_explicit() -> None:
    args = Config(rm_type="remote_rm", rm_url="http://127.0.0.1:9/rm")
    assert args.reward_request_timeout == remote.DEFAULT_ATTEMPT_TIMEOUT_S <= 10.0
    assert args.reward_retry_budget == remote.DEFAULT_BUDGET_S


async def test_hung_server_gives_up_within_the_budget(server: RewardServer) -> None:
    async def stuck(request: web.Request) -> web.StreamResponse:
        await server.release.wait()
        return web.json_response(1.0)

    server.behaviour = stuck
    samples = [Sample(index=0)]
    # no reward_timeout: the retry budget alone must end it
    await score_samples(_args(server.url, reward_request_timeout=0.1, reward_retry_budget=0.35), samples)
    error = samples[0].metadata["reward_error"]
    assert samples[0].status is Sample.Status.FAILED
    assert "reward_retry_budget=0.35s" in error and "no reply within reward_request_timeout=0.1s" in error
    assert 2 <= server.calls <= 1 + remote.DEFAULT_MAX_RETRIES  # retried, then stopped by the budget


async def test_retries_back_off_with_jitter(server: RewardServer, monkeypatch: pytest.MonkeyPatch) -> None:
    factors: list[tuple[float, float]] = []
    real_uniform = remote.random.uniform

    def recording(a: float, b: float) -> float:
        factors.append((a, b))
        return real_uniform(a, b)

    monkeypatch.setattr(remote.random, "uniform", recording)
    server.behaviour = server.reply(None, status=503, raw="busy")
    await score_samples(_args(server.url), [Sample(index=0)])
    assert factors == [(0.5, 1.5)] * remote.DEFAULT_MAX_RETRIES


async def test_waiting_is_logged(
    server: RewardServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(remote, "PROGRESS_LOG_S", 0.05)

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.json_response(1.0)

    server.behaviour = slow
    samples = [Sample(index=i) for i in range(3)]
    with caplog.at_level("WARNING", logger="miles_sdk.rewards.remote"):
        await score_samples(_args(server.url), samples)
    assert [s.reward for s in samples] == [1.0] * 3
    assert "3 samples waiting for a reward" in caplog.text
