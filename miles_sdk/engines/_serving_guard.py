"""What keeps the served HTTP API safe to expose: a control token, request limits, and the gate
that keeps served generation off a model the trainer is updating.

- Control endpoints (weight updates, aborts, adding workers) need ``Authorization: Bearer <token>``.
  Each server gets a random per-run token unless the user sets one; servers in this process are
  registered here so in-process clients (``HttpEngine``, the router, the compat
  ``miles.utils.http_utils``) add the header by themselves and Miles-style hooks run unchanged.
- :class:`ServerLimits`: body size, requests in flight and bytes in flight; over a limit a request
  is refused (413 or 503) before its body is read.
- :class:`GenerationGate`: served ``/generate`` requests and a train step take turns on the shared
  module (the engine flips ``.training``; sequence packing flips the attention implementation).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import attrs

__all__ = [
    "ApiError",
    "GenerationGate",
    "ServerLimits",
    "auth_headers",
    "check_bind",
    "is_authorized",
    "is_loopback",
    "new_token",
    "register_token",
    "unregister_token",
]

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
_TOKENS: dict[tuple[str, int], str] = {}
"""(host, port) of each server in this process -> its control token."""


class ApiError(Exception):
    """A request the server refuses; becomes ``{"error": {"message": ...}}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_token() -> str:
    """A fresh random control token (256 bits)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, *, what: str) -> None:
    """Refuse to serve on a non-loopback address without a token the user chose (a random one
    would be known to nobody else, and no token would let anyone on the network steer the run)."""
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"{what}: refusing to bind {host!r} without a token: anyone who can reach it could add workers, "
            "abort requests or load weights. Set Config.sglang_api_key (--sglang-api-key) or api_key=, "
            "or bind 127.0.0.1"
        )


def register_token(host: str, port: int, token: str) -> None:
    """Let in-process clients of ``host:port`` send ``token``."""
    _TOKENS[(_canonical(host), port)] = token


def unregister_token(host: str, port: int) -> None:
    _TOKENS.pop((_canonical(host), port), None)


def auth_headers(url: str, api_key: str | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` for ``url``: ``api_key`` when given, else the token of a
    server in this process at that address; ``{}`` when neither applies (the token never leaves for
    another host)."""
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.hostname is None or parts.port is None:
        return {}
    token = _TOKENS.get((_canonical(parts.hostname), parts.port))
    if token is None and is_loopback(parts.hostname):
        # A server bound to 0.0.0.0 is reached as 127.0.0.1.
        token = _TOKENS.get(("0.0.0.0", parts.port))
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_authorized(headers: Mapping[str, str], token: str) -> bool:
    """True when ``headers`` carry ``Authorization: Bearer <token>`` (constant-time compare)."""
    value = headers.get("Authorization", "")
    scheme, _, given = value.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _canonical(host: str) -> str:
    return "127.0.0.1" if is_loopback(host) else host.lower()


@attrs.frozen
class ServerLimits:
    """Bounds on what one server accepts at once. Over a limit the request is answered at once
    (413 body too large, 503 busy) instead of queuing on the trainer's event loop."""

    max_body_bytes: int = 8 * 1024**2
    """Largest request body (JSON)."""
    max_concurrent_requests: int = 4096
    """Requests being parsed or generated at once."""
    max_inflight_bytes: int = 256 * 1024**2
    """Sum of the bodies of the requests in flight."""

    @classmethod
    def for_context(cls, max_context_len: int | None, *, max_body_bytes: int | None = None) -> ServerLimits:
        """Limits sized so a prompt of ``max_context_len`` tokens fits, as ids or as text (32
        bytes per token covers an id with its separator and a token's worth of escaped text),
        with 1 MiB for the rest of the request; ``max_body_bytes`` overrides."""
        if max_body_bytes is None:
            max_body_bytes = 32 * (max_context_len or 131072) + 1024**2
        return cls(max_body_bytes=max_body_bytes, max_inflight_bytes=max(32 * max_body_bytes, 64 * 1024**2))


@attrs.define
class InFlight:
    """Requests and body bytes in flight on one server (event-loop thread only)."""

    limits: ServerLimits
    requests: int = 0
    bytes: int = 0

    @asynccontextmanager
    async def admit(self, content_length: int | None) -> AsyncIterator[None]:
        size = content_length or 0
        if size > self.limits.max_body_bytes:
            raise ApiError(
                413,
                f"request body of {size} bytes is over the server's limit of {self.limits.max_body_bytes} "
                "(sized from rollout_max_context_len; raise Config.serve_max_body_bytes)",
            )
        if self.requests >= self.limits.max_concurrent_requests:
            raise ApiError(503, f"server busy: {self.requests} requests in flight (limit "
                                f"{self.limits.max_concurrent_requests}); retry later")  # fmt: skip
        if self.bytes + size > self.limits.max_inflight_bytes:
            raise ApiError(503, f"server busy: {self.bytes} request bytes in flight (limit "
                                f"{self.limits.max_inflight_bytes}); retry later")  # fmt: skip
        self.requests += 1
        self.bytes += size
        try:
            yield
        finally:
            self.requests -= 1
            self.bytes -= size


class GenerationGate:
    """Served generation and training take turns on a shared module.

    The trainer calls :meth:`close` before it touches the weights (log-probs, train, sync) and
    :meth:`open` after; :meth:`generating` wraps each served request. Requests that arrive while
    closed wait up to ``wait_timeout`` seconds, then get 503. Every method runs on the one event
    loop that serves the requests, so no lock is needed.
    """

    def __init__(self, wait_timeout: float = 600.0) -> None:
        self.wait_timeout = wait_timeout
        self._closed = False
        self._active = 0
        self._opened = asyncio.Event()
        self._opened.set()
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def closed(self) -> bool:
        """True while the trainer holds the module."""
        return self._closed

    @asynccontextmanager
    async def generating(self) -> AsyncIterator[None]:
        """Hold the module for one served request (waits while the trainer has it)."""
        start = time.monotonic()
        while self._closed:
            left = self.wait_timeout - (time.monotonic() - start)
            try:
                await asyncio.wait_for(self._opened.wait(), timeout=max(left, 0.0))
            except TimeoutError:
                raise ApiError(
                    503,
                    f"the trainer is updating the model this server generates from; waited "
                    f"{self.wait_timeout:g} s for the train step to end. Retry later",
                ) from None
        self._active += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._drained.set()

    async def close(self) -> None:
        """Stop admitting served requests and wait for those running to finish."""
        self._closed = True
        self._opened.clear()
        await self._drained.wait()

    async def open(self) -> None:
        """Admit served requests again (the waiting ones go first)."""
        self._closed = False
        self._opened.set()
