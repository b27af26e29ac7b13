"""Shim of ``miles.utils.http_utils``: ``post`` and ``get`` with aiohttp.

Miles generate functions call ``await post(f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate",
payload)``. Inside the Trainer those args point at the SGLang-compatible server that the Trainer
starts around its engine (automatic when a generate or rollout function path is configured).

Differences from Miles: no Ray-distributed dispatch; connection errors, timeouts and 5xx replies
are retried with exponential backoff (0.05 s doubling to 2 s) up to ``max_retries`` attempts, while
a 4xx reply fails at once (retrying a malformed request cannot help). Requests to a server this
process serves carry its control token (docs/reliability.md, "The served HTTP API").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from miles_sdk.engines._serving_guard import auth_headers

__all__ = ["HttpRequestError", "get", "post"]

logger = logging.getLogger(__name__)

_BACKOFF_START = 0.05
_BACKOFF_MAX = 2.0
# Generation may legitimately take minutes: only connecting is bounded.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30.0)


class HttpRequestError(RuntimeError):
    """A request that failed for good: the URL, the status and the server's reply are in the message."""


def _decode(body: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


async def _request_once(
    session: aiohttp.ClientSession, action: str, url: str, payload: Any, headers: Mapping[str, str] | None
) -> Any:
    method = action.upper()
    if method in ("GET", "DELETE"):
        if payload:
            raise ValueError(
                f"http_utils.post(action={action!r}) takes no payload, got {type(payload).__name__}"
            )
        response = await session.request(method, url, headers=headers)
    else:
        response = await session.request(method, url, json=payload or {}, headers=headers)
    async with response:
        body = await response.text()
        if response.status >= 400:
            raise _StatusError(response.status, body)
        return _decode(body)


class _StatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


async def post(
    url: str,
    payload: Any,
    max_retries: int = 60,
    action: str = "post",
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Send ``payload`` as JSON to ``url`` (``action``: post, put, get, delete) and return the JSON
    reply (or the text when it is not JSON). Retries as the module doc says; raises
    :class:`HttpRequestError` after the last attempt."""
    if max_retries < 1:
        raise ValueError(f"max_retries must be >= 1, got {max_retries}")
    # The run's control token for a server this process serves (never sent elsewhere), so
    # Miles hooks that abort or update through the router keep working unchanged.
    headers = {**auth_headers(url), **(headers or {})}
    delay = _BACKOFF_START
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        for attempt in range(1, max_retries + 1):
            try:
                return await _request_once(session, action, url, payload, headers)
            except _StatusError as exc:
                if exc.status < 500:
                    raise HttpRequestError(f"{action.upper()} {url} failed: {exc}") from None
                error: Exception = exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = exc
            if attempt == max_retries:
                raise HttpRequestError(
                    f"{action.upper()} {url} failed after {max_retries} attempt(s): {error!r}"
                ) from error
            logger.info(
                "%s %s failed (%r); retry %d/%d in %.2fs", action, url, error, attempt, max_retries, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def get(url: str) -> Any:
    """``GET url`` once and return the JSON reply; an HTTP error status raises :class:`HttpRequestError`."""
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        try:
            return await _request_once(session, "get", url, None, auth_headers(url))
        except _StatusError as exc:
            raise HttpRequestError(f"GET {url} failed: {exc}") from None
