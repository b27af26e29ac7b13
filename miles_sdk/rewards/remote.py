"""``rm_type=remote_rm``: ask a reward server over HTTP.

POSTs ``{"prompt", "response", "label"}`` as JSON to ``args.rm_url``; the reply is a JSON number
or object, used as the reward. Unlike Miles (one new session per sample), one pooled session per
event loop is reused, with at most ``args.reward_concurrency`` connections. Connection errors,
timeouts and 5xx replies are retried with exponential backoff; a 4xx or a reply that is not a
number or object fails at once with the URL and a snippet of the body.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import TYPE_CHECKING, Any

import aiohttp

from miles_sdk.types import RewardValue, Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = ["RemoteRewardClient", "RemoteRewardError", "close_remote_clients", "remote_rm"]

DEFAULT_MAX_RETRIES = 3
"""Retries after the first attempt for connection errors, timeouts and 5xx replies."""
DEFAULT_BACKOFF_S = 0.5
"""First retry delay; it doubles on each further retry."""
DEFAULT_ATTEMPT_TIMEOUT_S = 60.0
"""Per-attempt HTTP timeout when ``reward_timeout`` is unset."""


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
    ) -> None:
        self.url = url
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        connector = aiohttp.TCPConnector(limit=max(1, concurrency))
        # Per attempt; the caller's reward_timeout bounds all attempts together.
        timeout = aiohttp.ClientTimeout(total=timeout_s or DEFAULT_ATTEMPT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._limit = asyncio.Semaphore(max(1, concurrency))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or the session was closed under it)."""
        return self._session.closed

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._session.close()

    async def score(self, payload: dict[str, Any]) -> RewardValue:
        """POST ``payload`` and return the reward, retrying transient failures."""
        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._limit:
                    return await self._post_once(payload)
            except _RetryableError as exc:
                last = exc
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # aiohttp can report our caller's cancellation (reward_timeout) as its own
                    # timeout; retrying would swallow the cancel and overrun the deadline.
                    raise asyncio.CancelledError from exc
                last = exc
        reason = (
            (f"{type(last).__name__}: {last}" if str(last) else type(last).__name__) if last else "no attempt"
        )
        raise RemoteRewardError(
            f"remote_rm {self.url}: gave up after {self.max_retries + 1} attempts ({reason})"
        )

    async def _post_once(self, payload: dict[str, Any]) -> RewardValue:
        async with self._session.post(self.url, json=payload) as resp:
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
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], RemoteRewardClient]]
_clients = weakref.WeakKeyDictionary()


def _client_for(args: Config) -> RemoteRewardClient:
    if not args.rm_url:
        raise RemoteRewardError("rm_type=remote_rm needs Config.rm_url")
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (args.rm_url, args.reward_concurrency)
    client = per_loop.get(key)
    if client is None or client.closed:
        client = RemoteRewardClient(
            args.rm_url,
            concurrency=args.reward_concurrency,
            timeout_s=DEFAULT_ATTEMPT_TIMEOUT_S,
            max_retries=DEFAULT_MAX_RETRIES,  # read now, so a test or a user can tune the module value
            backoff_s=DEFAULT_BACKOFF_S,
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
