"""``rm_type=remote_rm``: ask a reward server over HTTP.

POSTs ``{"prompt", "response", "label"}`` as JSON to ``args.rm_url``; the reply is a JSON number
or object, used as the reward. Unlike Miles (one new session per sample), one pooled session per
event loop is reused, with at most ``args.reward_concurrency`` connections.

Failures (issue 16.9, 16.10): connection errors, timeouts and 5xx replies are retried with
exponential backoff and jitter (so that a burst of failures does not retry in lockstep), each
attempt bounded by ``args.reward_request_timeout`` (10 s by default: a reward server answers well
within it, and a hung one costs 10 s per attempt, not 60) and all attempts of one sample by
``args.reward_retry_budget``. A 4xx or a reply that is not a number or object fails at once with the
URL and a snippet of the body. While requests wait longer than :data:`PROGRESS_LOG_S`, a line says
how many, for how long and how many retries ran, so a hung server is never silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from typing import TYPE_CHECKING, Any

import aiohttp

from miles_sdk.types import RewardValue, Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = ["RemoteRewardClient", "RemoteRewardError", "close_remote_clients", "remote_rm"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 3
"""Retries after the first attempt for connection errors, timeouts and 5xx replies."""
DEFAULT_BACKOFF_S = 0.5
"""First retry delay; it doubles on each further retry, times a random factor in [0.5, 1.5)."""
DEFAULT_ATTEMPT_TIMEOUT_S = 10.0
"""Per-attempt HTTP timeout (Config.reward_request_timeout)."""
DEFAULT_BUDGET_S = 60.0
"""Seconds one sample may spend on all its attempts and backoff (Config.reward_retry_budget)."""
PROGRESS_LOG_S = 10.0
"""Log a progress line every this many seconds while a request has waited longer than this."""


class RemoteRewardError(RuntimeError):
    """The reward server failed for good, or answered with something that is not a reward."""


class _RetryableError(Exception):
    pass


class RemoteRewardClient:
    """A pooled HTTP client for one reward server URL.

    Create it inside the event loop that will use it; :meth:`close` releases its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 64,
        timeout_s: float | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        self.url = url
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.attempt_timeout_s = timeout_s or DEFAULT_ATTEMPT_TIMEOUT_S
        self.budget_s = budget_s
        connector = aiohttp.TCPConnector(limit=max(1, concurrency))
        self._session = aiohttp.ClientSession(connector=connector)
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._waiting: dict[int, float] = {}
        """Start time of each sample being scored (by a per-call id), for the progress line."""
        self._next_id = 0
        self.retries = 0
        """Retries so far (all samples)."""
        self._progress: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the session was closed under it)."""
        return self._session.closed

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._progress is not None:
            self._progress.cancel()
            self._progress = None
        await self._session.close()

    async def score(self, payload: dict[str, Any]) -> RewardValue:
        """POST ``payload`` and return the reward, retrying transient failures within the budget."""
        call_id, start = self._next_id, time.monotonic()
        self._next_id += 1
        self._waiting[call_id] = start
        if self._progress is None or self._progress.done():
            self._progress = asyncio.get_running_loop().create_task(self._log_progress())
        try:
            return await self._score(payload, start)
        finally:
            del self._waiting[call_id]

    async def _score(self, payload: dict[str, Any], start: float) -> RewardValue:
        last: BaseException | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                if time.monotonic() + delay - start >= self.budget_s:
                    break
                self.retries += 1
                await asyncio.sleep(delay)
            remaining = self.budget_s - (time.monotonic() - start)
            if remaining <= 0:
                break
            attempts += 1
            try:
                async with self._limit:
                    return await self._post_once(payload, min(self.attempt_timeout_s, remaining))
            except _RetryableError as exc:
                last = exc
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # aiohttp can report our caller's cancellation (reward_timeout) as its own
                    # timeout; retrying would swallow the cancel and overrun the deadline.
                    raise asyncio.CancelledError from exc
                if isinstance(exc, TimeoutError) and not str(exc):
                    exc = TimeoutError(f"no reply within reward_request_timeout={self.attempt_timeout_s}s")
                last = exc
        reason = (
            (f"{type(last).__name__}: {last}" if str(last) else type(last).__name__) if last else "no attempt"
        )
        raise RemoteRewardError(
            f"remote_rm {self.url}: gave up after {attempts} attempts in {time.monotonic() - start:.1f}s "
            f"(reward_retry_budget={self.budget_s}s; {reason})"
        )

    async def _log_progress(self) -> None:
        """While requests wait longer than PROGRESS_LOG_S, say so every PROGRESS_LOG_S."""
        while self._waiting:
            await asyncio.sleep(PROGRESS_LOG_S)
            if not self._waiting:
                return
            oldest = time.monotonic() - min(self._waiting.values())
            if oldest >= PROGRESS_LOG_S:
                logger.warning(
                    "remote_rm %s: %d samples waiting for a reward, the oldest for %.0fs; %d retries so far "
                    "(reward_request_timeout=%ss per attempt, reward_retry_budget=%ss per sample)",
                    self.url,
                    len(self._waiting),
                    oldest,
                    self.retries,
                    self.attempt_timeout_s,
                    self.budget_s,
                )

    async def _post_once(self, payload: dict[str, Any], timeout_s: float) -> RewardValue:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.post(self.url, json=payload, timeout=timeout) as resp:
            body = await resp.text()
            if resp.status >= 500:
                raise _RetryableError(f"HTTP {resp.status}: {body[:200]!r}")
            if resp.status >= 400:
                raise RemoteRewardError(f"remote_rm {self.url}: HTTP {resp.status}: {body[:200]!r}")
        return _parse_reply(self.url, body)


def _parse_reply(url: str, body: str) -> RewardValue:
    try:
        value = json.loads(body)
    except ValueError:
        raise RemoteRewardError(f"remote_rm {url}: reply is not JSON: {body[:200]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float | dict):
        raise RemoteRewardError(
            f"remote_rm {url}: reply must be a JSON number or object, got {type(value).__name__}: {body[:200]!r}"
        )
    return float(value) if isinstance(value, int | float) else value


# One client per (event loop, url, pool size): aiohttp sessions are bound to the loop that made them.
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int, float, float], RemoteRewardClient]
]
_clients = weakref.WeakKeyDictionary()


def _client_for(args: Config) -> RemoteRewardClient:
    if not args.rm_url:
        raise RemoteRewardError("rm_type=remote_rm needs Config.rm_url")
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (args.rm_url, args.reward_concurrency, args.reward_request_timeout, args.reward_retry_budget)
    client = per_loop.get(key)
    if client is None or client.closed:
        client = RemoteRewardClient(
            args.rm_url,
            concurrency=args.reward_concurrency,
            timeout_s=args.reward_request_timeout,
            max_retries=DEFAULT_MAX_RETRIES,  # read now, so a test or a user can tune the module value
            backoff_s=DEFAULT_BACKOFF_S,
            budget_s=args.reward_retry_budget,
        )
        per_loop[key] = client
    return client


async def remote_rm(args: Config, sample: Sample, response: str | None = None) -> RewardValue:
    """Score ``sample`` on ``args.rm_url``; ``response`` replaces ``sample.response`` if given."""
    payload = {
        "prompt": sample.prompt,
        "response": sample.response if response is None else response,
        "label": sample.label,
    }
    return await _client_for(args).score(payload)


async def close_remote_clients() -> None:
    """Close the pooled clients of the running event loop."""
    per_loop = _clients.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client.close()
