"""Is every SGLang(-compatible) server up? Asked once when the Trainer starts, before any weights
load, so that a wrong port or a server that is down fails in seconds, named with the flag that
listed it, not at the first rollout after the model loaded.

Each server is asked ``GET /health`` (SGLang answers 200 once it serves, 503 while it warms up;
its API key does not guard it) or, where there is no ``/health`` (404/405), ``GET
/get_model_info``. A server still loading is not listening yet (SGLang binds its port after the
model loaded): connection refused, a 503 or a timeout are asked again until ``wait`` seconds
passed; all servers are asked at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
import attrs

from miles_sdk.engines._serving_guard import auth_headers, is_loopback
from miles_sdk.engines.http_client import HttpEngineError, normalize_url, read_json

__all__ = ["ProbedServer", "ServersDownError", "probe_servers", "wait_for_servers"]

_ATTEMPT_TIMEOUT = 10.0
"""Seconds one request may take (SGLang's /health generates one token, a few seconds at most)."""
_INTERVAL = 0.5
"""Seconds between two attempts on one server."""


@attrs.frozen
class ProbedServer:
    url: str
    """The server's URL (``http://host:port``)."""
    named_by: str
    """The setting that listed it, for the error (e.g. ``rollout_external_engine_addrs
    (--rollout-external-engine-addrs)``)."""


class ServersDownError(HttpEngineError):
    """Servers that did not answer in time; ``down`` maps each URL to what its last attempt got."""

    def __init__(self, message: str, down: dict[str, str]) -> None:
        super().__init__(message)
        self.down = down


async def probe_servers(
    servers: Sequence[ProbedServer],
    *,
    wait: float,
    api_key: str | None = None,
    what: str = "rollout_engine='http'",
    wait_setting: str = "rollout_external_wait_timeout (--rollout-external-wait-timeout)",
) -> None:
    """Return once every server answered; raise :class:`ServersDownError` naming each one that
    had not within ``wait`` seconds (0: one attempt each), what its last attempt got, and the
    setting that listed it. A 401/403 fails at once (the server is up but refuses the key)."""
    deadline = time.monotonic() + max(wait, 0.0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(_probe_one(session, s, deadline, api_key) for s in servers))
    down = {s.url: problem for s, problem in zip(servers, results, strict=True) if problem is not None}
    if not down:
        return
    lines = [f"{s.url} (listed by {s.named_by}): {down[s.url]}" for s in servers if s.url in down]
    raise ServersDownError(
        f"{what}: {len(down)} of {len(servers)} server(s) did not answer GET /health "
        + (f"within {wait:g} s: " if wait > 0 else "(asked once): ")
        + "; ".join(lines)
        + f". Check each host and port and that its server is up; a server still loading its model is "
        f"waited for up to {wait_setting}.",
        down,
    )


async def _probe_one(
    session: aiohttp.ClientSession, server: ProbedServer, deadline: float, api_key: str | None
) -> str | None:
    """None once ``server`` answered, else what its last attempt got."""
    url = normalize_url(server.url)
    headers = auth_headers(url, api_key)
    problem = "no attempt"
    while True:
        left = deadline - time.monotonic()
        attempt = aiohttp.ClientTimeout(total=min(_ATTEMPT_TIMEOUT, max(left, 1.0)))
        for path in ("/health", "/get_model_info"):
            try:
                async with session.get(url + path, headers=headers, timeout=attempt) as resp:
                    body = await read_json(resp)
            except (TimeoutError, aiohttp.ClientError) as e:
                problem = f"GET {path}: {type(e).__name__}: {e}" if str(e) else f"GET {path}: {type(e).__name__}"
                break
            if resp.status == 200:
                return None
            if resp.status in (401, 403):
                return (
                    f"GET {path}: HTTP {resp.status}: it refuses this client's API key (sglang_api_key, "
                    f"--sglang-api-key): {str(body)[:200]}"
                )
            problem = f"GET {path}: HTTP {resp.status}: {str(body)[:200]}"
            if resp.status not in (404, 405):
                break  # a 503 (warming up) or another error: asked again below
        else:  # both 404/405: something answers there, but not an SGLang server
            return f"answers neither GET /health nor GET /get_model_info (HTTP {resp.status}): not an SGLang server?"
        left = deadline - time.monotonic()
        if left <= 0:
            return problem
        await asyncio.sleep(min(_INTERVAL, left))


def wait_for_servers(
    servers: Sequence[ProbedServer],
    *,
    wait: float,
    api_key: str | None = None,
    what: str = "rollout_engine='http'",
    wait_setting: str = "rollout_external_wait_timeout (--rollout-external-wait-timeout)",
) -> None:
    """:func:`probe_servers` from sync code, on a loop of its own in a worker thread (so it works
    inside a running loop too, as in a notebook cell)."""
    if not servers:
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="miles-sdk-probe") as pool:
        try:
            pool.submit(
                asyncio.run, probe_servers(servers, wait=wait, api_key=api_key, what=what, wait_setting=wait_setting)
            ).result()
        except ServersDownError as e:
            if not _in_running_loop() or not any(is_loopback(urlsplit(u).hostname or "") for u in e.down):
                raise
            # A server served by this thread's loop (started with `await start_server(...)` in a
            # notebook cell) cannot answer while this sync call blocks that loop.
            raise ServersDownError(
                f"{e} This thread runs an event loop, blocked while this call waits: a server served by it "
                "cannot answer; start the Trainer off the loop (await asyncio.to_thread(Trainer, ...)).",
                e.down,
            ) from None


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
