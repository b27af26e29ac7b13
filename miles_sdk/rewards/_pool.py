"""Where CPU-heavy graders run: a process pool of ``reward_num_workers``, or two threads when 0.

Grading off the event loop keeps generation flowing while sympy works. Processes give real
parallelism (the GIL serialises sympy in threads) and let math-verify keep its ``signal.alarm``
timeouts, since a pool task runs on its worker's main thread. Workers start with ``spawn`` so a
parent holding CUDA, torch threads or locks cannot be forked into a broken state.

A grade takes about a millisecond, the same order as one round trip to a worker process, so
calls submitted in the same event-loop tick are sent together in a few chunks (micro-batching):
one pickle and one pipe write per chunk instead of per sample.

Every failure reaches the caller: a flush that cannot submit (pool shut down, broken, or a script
that cannot be re-imported by ``spawn``), a chunk cancelled by a shutdown or resize, a worker that
died, and a grade that waits longer than ``timeout`` all resolve the waiting futures with an error.
Nothing is left to a loop callback that only logs.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import math
import multiprocessing
import os
import pickle
import re
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_POOL_TIMEOUT",
    "GRADER_THREADS",
    "MAX_CHUNK",
    "RewardPoolError",
    "run_cpu_bound",
    "shutdown_reward_workers",
]

DEFAULT_POOL_TIMEOUT = 300.0
"""Seconds a call may wait for its grade (queue and work) unless the caller says otherwise. A
grade takes milliseconds and math-verify stops itself after 5 s, so this only fires when workers
never start or hang; without it such a step would wait forever."""


class RewardPoolError(RuntimeError):
    """The reward worker pool could not grade a call (never started, died, was shut down, timed out)."""

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


_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)


def missing_main_guard() -> str | None:
    """The path of the ``__main__`` script when it has no ``if __name__ == "__main__":`` guard.

    Workers start with ``spawn``, which re-imports the main script in every worker: without the
    guard each worker runs the whole script again (loads the model, starts training) and never
    becomes a worker. Interactive sessions and ``python -c`` have no script and are fine.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py") or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return None if _MAIN_GUARD.search(source) else path


def _main_guard_message(script: str) -> str:
    return (
        f"{script} has no `if __name__ == \"__main__\":` guard. The reward worker processes start "
        "with spawn, which re-imports that script in each worker, so they would run it again instead "
        "of grading. Put the script's top-level code (building the Trainer, training) under "
        "`if __name__ == \"__main__\":`, or set reward_num_workers=0 to grade on a thread."
    )


def _get_pool(num_workers: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != num_workers:
            script = missing_main_guard()
            if script is not None:
                raise RewardPoolError(_main_guard_message(script))
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            _pool = ProcessPoolExecutor(
                max_workers=num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
            _pool_size = num_workers
        return _pool


def _drop_pool(broken: Executor, *, kill: bool = False) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)
    if kill and isinstance(broken, ProcessPoolExecutor):
        # A hung worker (one that never finished starting) would otherwise live on.
        for process in list((getattr(broken, "_processes", None) or {}).values()):
            process.terminate()


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
        try:
            executor: Executor = _get_pool(self.num_workers) if self.num_workers > 0 else _get_threads()
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller below
            _fail(items, exc)
            return
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            try:
                done = self.loop.run_in_executor(executor, _run_many, [call for call, _ in chunk])
            except Exception as exc:  # noqa: BLE001 - shut down or broken between get and submit
                if isinstance(exc, BrokenProcessPool):
                    _drop_pool(executor)
                _fail(chunk, RewardPoolError(f"reward grading could not be submitted: {exc}"))
                continue
            done.add_done_callback(functools.partial(self._deliver, chunk=chunk, executor=executor))

    @staticmethod
    def _deliver(
        done: asyncio.Future[list[tuple[bool, Any]]],
        chunk: list[tuple[_Call, asyncio.Future[Any]]],
        executor: Executor,
    ) -> None:
        error: BaseException | None
        if done.cancelled():
            # shutdown_reward_workers() or a pool resize cancelled the queued chunk.
            error = RewardPoolError("reward grading was cancelled: the reward worker pool was shut down or resized")
        else:
            error = done.exception()
        if isinstance(error, BrokenProcessPool):
            _drop_pool(executor)
            error = RewardPoolError(
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


def _fail(items: Sequence[tuple[_Call, asyncio.Future[Any]]], error: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(error)


async def run_cpu_bound(
    num_workers: int, fn: Callable[..., T], *args: Any, timeout: float | None = DEFAULT_POOL_TIMEOUT
) -> T:
    """Run ``fn(*args)`` in the shared reward process pool (``num_workers`` > 0) or on a thread.

    ``fn`` and its arguments must be picklable for the pool. Calls made in the same loop tick
    travel together. A crashed worker (segfault, OOM) fails the calls it held; the next call
    starts a fresh pool. A call that has no result after ``timeout`` seconds (None: no limit)
    raises :class:`RewardPoolError`, and the pool, presumably stuck, is replaced.
    """
    loop = asyncio.get_running_loop()
    per_loop = _batchers.setdefault(loop, {})
    batcher = per_loop.get(num_workers)
    if batcher is None:
        batcher = per_loop[num_workers] = _Batcher(loop, num_workers)
    future = batcher.submit(fn, args)
    try:
        result: T = await asyncio.wait_for(future, timeout)
    except TimeoutError:
        where = "reward worker pool" if num_workers > 0 else "reward grader threads"
        hint = ""
        if num_workers > 0:
            with _lock:
                stuck = _pool
            if stuck is not None:
                _drop_pool(stuck, kill=True)
            script = missing_main_guard()
            hint = f" {_main_guard_message(script)}" if script else " The pool was restarted."
        raise RewardPoolError(
            f"no grade from the {where} after {timeout:g} s ({getattr(fn, '__name__', fn)!s}).{hint}"
        ) from None
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
