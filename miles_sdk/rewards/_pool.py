"""Where CPU-heavy graders run: a process pool of ``reward_num_workers``, or two threads when 0.

Grading off the event loop keeps generation flowing while sympy works. Processes give real
parallelism (the GIL serialises sympy in threads) and let math-verify keep its ``signal.alarm``
timeouts, since a pool task runs on its worker's main thread. Workers start with ``spawn`` so a
parent holding CUDA, torch threads or locks cannot be forked into a broken state.

A grade takes about a millisecond, the same order as one round trip to a worker process, so
calls submitted in the same event-loop tick are sent together in a few chunks (micro-batching):
one pickle and one pipe write per chunk instead of per sample.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import math
import multiprocessing
import pickle
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["GRADER_THREADS", "MAX_CHUNK", "run_cpu_bound", "shutdown_reward_workers"]

MAX_CHUNK = 32
"""Most calls sent to a worker in one message."""

T = TypeVar("T")
_Call = tuple[Callable[..., Any], tuple[Any, ...]]

GRADER_THREADS = 2
"""Threads used when ``reward_num_workers`` is 0. sympy holds the GIL, so more threads would
only add switching; two keep grading going if one answer makes sympy crawl."""

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_threads: ThreadPoolExecutor | None = None


def _get_threads() -> ThreadPoolExecutor:
    # Our own threads, not the loop's default executor, which other stages (tokenizers, file
    # reads via asyncio.to_thread) share and which sympy would otherwise crowd out.
    global _threads
    with _lock:
        if _threads is None:
            _threads = ThreadPoolExecutor(max_workers=GRADER_THREADS, thread_name_prefix="reward-grader")
        return _threads


def _init_worker() -> None:
    from miles_sdk.rewards.math import set_signal_timeouts

    set_signal_timeouts(True)


def _get_pool(num_workers: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != num_workers:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            _pool = ProcessPoolExecutor(
                max_workers=num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
            _pool_size = num_workers
        return _pool


def _drop_pool(broken: Executor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _run_many(calls: Sequence[_Call]) -> list[tuple[bool, Any]]:
    """Worker side: run each call; one failure must not lose the chunk's other results."""
    out: list[tuple[bool, Any]] = []
    for fn, args in calls:
        try:
            out.append((True, fn(*args)))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller's sample
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 - an exception that cannot cross the process boundary
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            out.append((False, exc))
    return out


class _Batcher:
    """Collects one loop tick's calls and ships them to the executor in chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, num_workers: int) -> None:
        self.loop = loop
        self.num_workers = num_workers
        self.pending: list[tuple[_Call, asyncio.Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.pending:
            self.loop.call_soon(self._flush)
        self.pending.append(((fn, args), future))
        return future

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        parallel = self.num_workers if self.num_workers > 0 else GRADER_THREADS
        n_chunks = max(min(len(items), parallel), math.ceil(len(items) / MAX_CHUNK))
        size = math.ceil(len(items) / n_chunks)
        executor: Executor = _get_pool(self.num_workers) if self.num_workers > 0 else _get_threads()
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            done = self.loop.run_in_executor(executor, _run_many, [call for call, _ in chunk])
            done.add_done_callback(functools.partial(self._deliver, chunk=chunk, executor=executor))

    @staticmethod
    def _deliver(
        done: asyncio.Future[list[tuple[bool, Any]]],
        chunk: list[tuple[_Call, asyncio.Future[Any]]],
        executor: Executor,
    ) -> None:
        error = done.exception()
        if isinstance(error, BrokenProcessPool):
            _drop_pool(executor)
            error = RuntimeError(
                "a reward worker process died (crash or out of memory); the pool was restarted"
            )
        for i, (_, future) in enumerate(chunk):
            if future.done():  # cancelled by reward_timeout while queued
                continue
            if error is not None:
                future.set_exception(error)
                continue
            ok, value = done.result()[i]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Batcher]] = (
    weakref.WeakKeyDictionary()
)


async def run_cpu_bound(num_workers: int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in the shared reward process pool (``num_workers`` > 0) or on a thread.

    ``fn`` and its arguments must be picklable for the pool. Calls made in the same loop tick
    travel together. A crashed worker (segfault, OOM) fails the calls it held; the next call
    starts a fresh pool.
    """
    loop = asyncio.get_running_loop()
    per_loop = _batchers.setdefault(loop, {})
    batcher = per_loop.get(num_workers)
    if batcher is None:
        batcher = per_loop[num_workers] = _Batcher(loop, num_workers)
    result: T = await batcher.submit(fn, args)
    return result


def shutdown_reward_workers() -> None:
    """Stop the reward worker processes and threads (they restart on the next call that needs them)."""
    global _pool, _threads
    with _lock:
        pool, _pool = _pool, None
        threads, _threads = _threads, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    if threads is not None:
        threads.shutdown(wait=False, cancel_futures=True)


atexit.register(shutdown_reward_workers)
