"""The router's view of one engine: an SGLang-compatible URL, or an in-process InferenceEngine.

Both speak SGLang's JSON bodies, so the router and its middlewares see the same request/reply
dicts whichever kind of worker answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from miles_sdk.engines._serving_guard import auth_headers
from miles_sdk.engines.base import InferenceEngine
from miles_sdk.engines.http_client import normalize_url, read_json
from miles_sdk.engines.http_server import ApiError, EngineService
from miles_sdk.rollout.context import TokenizerLike

__all__ = ["EngineWorker", "UpstreamError", "UrlWorker", "Worker", "WorkerDown"]


class WorkerDown(Exception):
    """The worker could not be reached (connection refused/reset): try another one."""


class UpstreamError(RuntimeError):
    """A worker answered with a non-200 status; the router passes status and body on."""

    def __init__(self, worker: str, status: int, body: object) -> None:
        super().__init__(f"{worker} answered HTTP {status}: {str(body)[:300]}")
        self.worker = worker
        self.status = status
        self.body = body


class Worker:
    """Base class: load and health bookkeeping shared by both kinds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = 0
        """Requests in flight through the router."""
        self.requests = 0
        self.failures = 0
        """Consecutive failures (health checks or connection errors)."""
        self.healthy = True
        self.last_error: str | None = None
        self.in_flight: set[asyncio.Task[dict[str, Any]]] = set()
        """The router's /generate calls on this worker now (cancelled and re-sent elsewhere when
        the worker is taken out of rotation)."""
        self.evicted: set[asyncio.Task[dict[str, Any]]] = set()
        """In-flight calls the router cancelled because the worker went down (not the caller)."""

    def evict_in_flight(self) -> int:
        """Cancel every /generate call in flight here, marked as evicted so the router re-sends
        it to another worker; returns how many. A call whose reply already arrived is left alone
        (its reply is delivered once, never re-sent)."""
        evicted = 0
        for task in list(self.in_flight):
            if not task.done():
                self.evicted.add(task)
                task.cancel()
                evicted += 1
        return evicted

    async def generate(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One single (not batched) /generate request."""
        status, body = await self.call("POST", "/generate", payload)
        if status != 200:
            raise UpstreamError(self.name, status, body)
        if not isinstance(body, dict):
            raise UpstreamError(self.name, 502, f"/generate reply is not a JSON object: {str(body)[:200]}")
        return body

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, object]:
        """Any SGLang endpoint -> (status, JSON body). Raises WorkerDown when unreachable."""
        raise NotImplementedError

    async def health(self) -> bool:
        """True when ``/health`` answers 200."""
        try:
            status, _ = await self.call("GET", "/health")
        except (TimeoutError, WorkerDown) as e:
            self.last_error = str(e)
            return False
        return status == 200


class UrlWorker(Worker):
    """An SGLang server (or our own) at ``url``."""

    def __init__(
        self,
        url: str,
        session: Callable[[], aiohttp.ClientSession],
        health_timeout: float,
        request_timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(normalize_url(url))
        self._api_key = api_key
        self._session = session
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout)
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, object]:
        timeout = self._health_timeout if path == "/health" else self._request_timeout
        try:
            async with self._session().request(
                method,
                self.name + path,
                json=None if method == "GET" else dict(body or {}),
                timeout=timeout,
                headers=auth_headers(self.name, self._api_key),
            ) as resp:
                return resp.status, await read_json(resp)
        except aiohttp.ClientConnectionError as e:
            raise WorkerDown(f"{self.name}{path}: {type(e).__name__}: {e}") from e


class EngineWorker(Worker):
    """An in-process engine served through :class:`EngineService` (no sockets)."""

    def __init__(self, name: str, engine: InferenceEngine, tokenizer: TokenizerLike | None) -> None:
        super().__init__(name)
        self.engine = engine
        self.service = EngineService(engine, tokenizer)

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, object]:
        s, payload = self.service, body or {}
        try:
            match path:
                case "/generate":
                    return 200, await s.generate(payload)
                case "/abort_request":
                    return 200, await s.abort(payload)
                case "/health" | "/health_generate":
                    return 200, "ok"
                case "/get_model_info" | "/get_server_info":
                    return 200, s.model_info()
                case "/get_weight_version":
                    return 200, {"weight_version": str(self.engine.weight_version)}
                case "/flush_cache":
                    return 200, await s.flush_cache()
                case "/update_weight_version":
                    return 200, s.update_weight_version(payload)
                case "/update_weights_from_disk":
                    return 200, await s.update_weights_from_disk(payload)
                case "/get_weights_by_name":
                    return 200, await s.get_weights_by_name(payload)
                case _:
                    return 404, {"error": {"message": f"{self.name}: no endpoint {path}"}}
        except ApiError as e:
            return e.status, {"error": {"message": e.message}}
