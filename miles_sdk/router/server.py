"""Serve a :class:`~miles_sdk.router.Router` over SGLang's HTTP API, as the Miles router does.

Point ``args.sglang_router_ip`` / ``args.sglang_router_port`` at it and Miles generate functions
reach every engine through the router's balancing and middlewares::

    router = Router([engine_a, "http://10.0.0.2:30000"], middlewares=[PrefixCacheMiddleware()])
    handle = await start_router_server(router)

Endpoints: ``POST /generate`` (single or batched, each request routed on its own),
``POST /abort_request``, ``GET /health`` (503 when no engine is healthy), ``GET /health_generate``,
``GET /list_workers``, ``POST /add_worker`` and ``POST /remove_worker`` (``?url=`` or ``{"url"}``),
``GET /get_model_info``,
``GET /get_server_info``, ``GET /get_weight_version`` (forwarded to one engine), and
``/flush_cache``, ``POST /update_weight_version``, ``POST /update_weights_from_disk`` (sent to every
engine; the router's middleware caches are invalidated). Any other path is proxied to the
least-busy healthy engine, as Miles's router does.

Control endpoints (aborts, workers, weight updates, cache flushes, and any proxied request other
than a GET) need ``Authorization: Bearer <token>``, as on :func:`~miles_sdk.engines.http_server.start_server`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from miles_sdk.engines._serving_guard import (
    ApiError,
    GenerationGate,
    InFlight,
    ServerLimits,
    check_bind,
    new_token,
)
from miles_sdk.engines.http_client import parse_weight_version
from miles_sdk.engines.http_server import Endpoint, ServerHandle, json_endpoint, serve_app, split_batch
from miles_sdk.router._workers import UpstreamError
from miles_sdk.router.router import NoHealthyWorkerError, Router

__all__ = ["build_router_app", "start_router_server"]

logger = logging.getLogger(__name__)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _relay(status: int, body: object) -> web.Response:
    return web.json_response(body, status=status)


def _router_errors(e: Exception) -> web.Response | None:
    if isinstance(e, UpstreamError):
        return _relay(e.status, e.body)
    if isinstance(e, NoHealthyWorkerError):
        return _error(503, str(e))
    return None


def build_router_app(
    router: Router,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    gate: GenerationGate | None = None,
) -> web.Application:
    """The aiohttp application serving ``router``; ``api_key`` guards the control endpoints and
    ``gate`` holds /generate while a train step runs."""
    limits = limits or ServerLimits()
    inflight = InFlight(limits)

    def endpoint(fn: Endpoint, *, control: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return json_endpoint(fn, inflight, token=api_key if control else None, on_error=_router_errors)

    async def route_all(body: Mapping[str, Any]) -> web.StreamResponse:
        batch = split_batch(body)
        if batch is None:
            return web.json_response(await router.route(dict(body)))
        return web.json_response(list(await asyncio.gather(*(router.route(p) for p in batch))))

    async def generate(_: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        if gate is None:
            return await route_all(body)
        async with gate.generating():
            return await route_all(body)

    async def abort(_: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        await router.abort_all()
        return web.json_response({"success": True})

    async def health(_: web.Request, __: Mapping[str, Any]) -> web.StreamResponse:
        if any(w.healthy for w in router.workers):
            return web.json_response("ok")
        return _error(503, "no healthy engine")

    async def forward(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        return _relay(*await router.forward(request.method, request.path, body))

    async def list_workers(_: web.Request, __: Mapping[str, Any]) -> web.StreamResponse:
        workers = router.workers
        return web.json_response(
            {
                "urls": [w.name for w in workers],
                "workers": [
                    {
                        "url": w.name,
                        "healthy": w.healthy,
                        "active": w.active,
                        "requests": w.requests,
                        "failures": w.failures,
                        "last_error": w.last_error,
                    }
                    for w in workers
                ],
            }
        )

    def worker_url(request: web.Request, body: Mapping[str, Any]) -> str:
        url = (
            request.query.get("url")
            or request.query.get("worker_url")
            or body.get("url")
            or body.get("worker_url")
        )
        if not isinstance(url, str) or not url:
            raise ApiError(400, 'worker url is required (?url=... or {"url": ...})')
        return url

    async def add_worker(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        router.add_worker(worker_url(request, body))
        return web.json_response({"status": "success", "worker_urls": [w.name for w in router.workers]})

    async def remove_worker(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        url = worker_url(request, body)
        if not router.remove_worker(url):
            raise ApiError(404, f"no worker {url!r}; workers: {[w.name for w in router.workers]}")
        return web.json_response({"status": "success", "worker_urls": [w.name for w in router.workers]})

    def broadcaster(
        on_success: Callable[[Mapping[str, Any]], None],
    ) -> Endpoint:
        async def handler(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
            results = await router.broadcast("POST", request.path, body)
            failed = {name: r for name, r in results.items() if not (isinstance(r, tuple) and r[0] == 200)}
            router.invalidate_caches()
            if failed:
                return web.json_response({"success": False, "message": f"failed on {failed}"}, status=400)
            on_success(body)
            return web.json_response({"success": True, "message": f"sent to {len(results)} engines"})

        return handler

    def note_version(body: Mapping[str, Any]) -> None:
        version = body.get("new_version", body.get("weight_version"))
        if version is not None:
            router.note_weight_version(parse_weight_version(version, router.weight_version))

    def nothing(_: Mapping[str, Any]) -> None:
        return None

    app = web.Application(client_max_size=limits.max_body_bytes)
    app.router.add_post("/generate", endpoint(generate))
    app.router.add_post("/abort_request", endpoint(abort, control=True))
    app.router.add_get("/health", endpoint(health))
    for path in ("/health_generate", "/get_model_info", "/get_server_info", "/get_weight_version"):
        app.router.add_get(path, endpoint(forward))
    app.router.add_get("/list_workers", endpoint(list_workers))
    app.router.add_post("/add_worker", endpoint(add_worker, control=True))
    app.router.add_post("/remove_worker", endpoint(remove_worker, control=True))
    app.router.add_route("*", "/flush_cache", endpoint(broadcaster(nothing), control=True))
    app.router.add_post("/update_weight_version", endpoint(broadcaster(note_version), control=True))
    app.router.add_post("/update_weights_from_disk", endpoint(broadcaster(note_version), control=True))
    # Like Miles's router: anything else is proxied to the least-busy healthy engine. Only GETs
    # go through without the token: a proxied POST may steer the engines (a weight update by
    # another name), and the router forwards it with its own upstream credentials.
    app.router.add_get("/{path:.*}", endpoint(forward))
    app.router.add_route("*", "/{path:.*}", endpoint(forward, control=True))
    return app


async def start_router_server(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    gate: GenerationGate | None = None,
) -> ServerHandle:
    """Serve ``router`` on ``host:port`` (0: a free port) and start its health loop.

    ``api_key`` guards the control endpoints (default: a random token, in ``handle.api_key``;
    required to bind a non-loopback ``host``). ``ServerHandle.close()`` stops the server; close
    the router yourself (``await router.close()``).
    """
    check_bind(host, api_key, what="start_router_server")
    await router.start()
    token = api_key or new_token()
    app = build_router_app(router, api_key=token, limits=limits, gate=gate)
    return await serve_app(app, host, port, api_key=token)
