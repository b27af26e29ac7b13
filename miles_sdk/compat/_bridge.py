"""Blocking on async work from sync Miles code: ``miles.utils.async_utils.run`` and the sync
``generate_rollout``.

Miles runs the rollout function synchronously and lets it block on coroutines through a global
background loop (``run(coro)``). In the Trainer, the engine, the HTTP server and the rollout context
live on the Trainer's own loop, so a coroutine must run *there*; and the sync rollout function must
not run on that loop's thread, or blocking on it would deadlock. :func:`call_off_loop` (used by the
Trainer for sync rollout functions) runs the function on a worker thread and records the host loop;
:func:`run_blocking` then schedules coroutines back onto it. Outside a Trainer a private background
loop plays Miles's part.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

# The core owns the host loop (the Trainer calls sync rollout functions through call_off_loop);
# this layer only reads it, so the loop never has to import the compatibility layer.
from miles_sdk._loop import call_off_loop, host_loop

__all__ = ["BackgroundLoop", "call_off_loop", "host_loop", "run_blocking"]

T = TypeVar("T")

class BackgroundLoop:
    """An event loop running forever on a daemon thread (Miles's ``AsyncLoopThread``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="miles-compat-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and block until it finishes (exceptions propagate)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_background: BackgroundLoop | None = None
_background_lock = threading.Lock()


def background_loop() -> BackgroundLoop:
    """The process-wide fallback loop, started on first use."""
    global _background
    with _background_lock:
        if _background is None:
            _background = BackgroundLoop()
        return _background


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code and return its result.

    Inside a sync rollout function called by the Trainer, it runs on the Trainer's loop (where the
    engine and the rollout context live); elsewhere on a background loop. Called from a thread
    whose own loop is running it cannot block without deadlocking, so it raises instead.
    """
    running = _running_loop()
    if running is not None:
        coro.close()
        raise RuntimeError(
            "miles.utils.async_utils.run() (or the sync generate_rollout) was called from inside a running "
            "event loop, where blocking would deadlock it; `await` the coroutine instead, or make the "
            "calling rollout function a plain `def` (the Trainer runs sync rollout functions off its loop)"
        )
    loop = host_loop()
    if loop is not None:
        # The worker thread's context (rollout context included) travels with the scheduled task.
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    return background_loop().run(coro)
