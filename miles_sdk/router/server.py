"""Serve a :class:`~miles_sdk.router.Router` over SGLang's HTTP API, as the Miles router does.

Point ``args.sglang_router_ip`` / ``args.sglang_router_port`` at it and Miles generate functions
reach every engine through the router's balancing and middlewares::

    router = Router([engine_a, "http://10.0.0.2:30000"], middlewares=[PrefixCacheMiddleware()])
    handle = await start_router_server(router)

Endpoints: ``POST /generate`` (single or batched, each request routed on its own),
``POST /abort_request``, ``GET /health`` (503 when no engine is healthy), ``GET /health_generate``,
``GET /list_workers``, ``POST /add_worker`` (``?url=`` or ``{"url"}``), ``GET /get_model_info``,
``GET /get_server_info``, ``GET /get_weight_version`` (forwarded to one engine), and
``/flush_cache``, ``POST /update_weight_version``, ``POST /update_weights_from_disk`` (sent to every
engine; the router's middleware caches are invalidated). Any other path is proxied to the
least-busy healthy engine, as Miles's router does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from miles_sdk.engines.http_client import parse_weight_version
from miles_sdk.engines.http_server import ApiError, ServerHandle, read_json_object, serve_app, split_batch
from miles_sdk.router._workers import UpstreamError
from miles_sdk.router.router import NoHealthyWorkerError, Router

__all__ = ["build_router_app", "start_router_server"]

logger = logging.getLogger(__name__)

_Handler = Callable[[web.Request, Mapping[str, Any]], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _relay(status: int, body: object) -> web.Response:
    return web.json_response(body, status=status)


def _endpoint(fn: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            return await fn(request, body)
        except ApiError as e:
            return _error(e.status, e.message)
        except UpstreamError as e:
            return _relay(e.status, e.body)
        except NoHealthyWorkerError as e:
            return _error(503, str(e))
        except Exception as e:
            logger.exception("router %s failed", request.path)
            return _error(500, f"router {request.path}: {type(e).__name__}: {e}")

    return handler


def build_router_app(router: Router) -> web.Application:
    """The aiohttp application serving ``router``."""

    async def generate(_: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        batch = split_batch(body)
        if batch is None:
            return web.json_response(await router.route(dict(body)))
        return web.json_response(list(await asyncio.gather(*(router.route(p) for p in batch))))

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

    async def add_worker(request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        url = (
            request.query.get("url")
            or request.query.get("worker_url")
            or body.get("url")
            or body.get("worker_url")
        )
        if not isinstance(url, str) or not url:
            return _error(400, 'worker url is required (?url=... or {"url": ...})')
        router.add_worker(url)
        return web.json_response({"status": "success", "worker_urls": [w.name for w in router.workers]})

    def broadcaster(
        on_success: Callable[[Mapping[str, Any]], None],
    ) -> _Handler:
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

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/generate", _endpoint(generate))
    app.router.add_post("/abort_request", _endpoint(abort))
    app.router.add_get("/health", _endpoint(health))
    for path in ("/health_generate", "/get_model_info", "/get_server_info", "/get_weight_version"):
        app.router.add_get(path, _endpoint(forward))
    app.router.add_get("/list_workers", _endpoint(list_workers))
    app.router.add_post("/add_worker", _endpoint(add_worker))
    app.router.add_route("*", "/flush_cache", _endpoint(broadcaster(nothing)))
    app.router.add_post("/update_weight_version", _endpoint(broadcaster(note_version)))
    app.router.add_post("/update_weights_from_disk", _endpoint(broadcaster(note_version)))
    # Like Miles's router: anything else is proxied to the least-busy healthy engine.
    app.router.add_route("*", "/{path:.*}", _endpoint(forward))
    return app


async def start_router_server(router: Router, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    """Serve ``router`` on ``host:port`` (0: a free port) and start its health loop.

    ``ServerHandle.close()`` stops the server; close the router yourself (``await router.close()``).
    """
    await router.start()
    return await serve_app(build_router_app(router), host, port)
