"""Shim of ``miles.utils.async_utils``: ``run(coro)`` blocks on a coroutine from sync code.

Inside a sync rollout function called by the Trainer the coroutine runs on the Trainer's loop
(where the engine lives); elsewhere on a background loop, as in Miles. See
:mod:`miles_sdk.compat._bridge`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from miles_sdk.compat._bridge import BackgroundLoop, background_loop, run_blocking

__all__ = ["eager_create_task", "get_async_loop", "run"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result (see the module doc for which loop)."""
    return run_blocking(coro)


def get_async_loop() -> BackgroundLoop:
    """The background loop (``.loop``, ``.run(coro)``) used outside a Trainer."""
    return background_loop()


async def eager_create_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Create a task and yield once, so its first step runs before the caller continues."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task
