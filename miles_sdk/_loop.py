"""A private event loop on a background thread, so the sync Trainer API works anywhere:
in a script, and inside an already-running loop such as a Jupyter cell; and sync functions
called off that loop (:func:`call_off_loop`), which may block on coroutines scheduled back onto
it (:func:`host_loop`; the Miles compatibility layer's ``run`` does)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LoopThread", "call_off_loop", "host_loop"]

_HOST_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "miles_sdk_host_loop", default=None
)


async def call_off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Await ``fn(*args)`` run on a worker thread, with this loop recorded as the host loop.

    The worker sees a copy of the caller's context (the Trainer's rollout context), so sync code
    in ``fn`` (Miles's rollout functions) may block on coroutines run on the host loop.
    """
    token = _HOST_LOOP.set(asyncio.get_running_loop())
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        _HOST_LOOP.reset(token)


def host_loop() -> asyncio.AbstractEventLoop | None:
    """The loop that the current sync function was called from by :func:`call_off_loop`, if any."""
    loop = _HOST_LOOP.get()
    return loop if loop is not None and loop.is_running() else None


class LoopThread:
    """Owns one event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="miles-sdk-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait for its result (exceptions propagate)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop; await the coroutine instead")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any error here) must not leave the rollout running in the background.
            future.cancel()
            # Wait for the cancellation to land; its own outcome is not the error to report.
            concurrent.futures.wait([future], timeout=30)
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop (e.g. an engine's scheduler), then stop it."""
        if self.loop.is_closed():
            return
        self.run(_cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
