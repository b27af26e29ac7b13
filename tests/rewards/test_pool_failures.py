"""Every reward-pool failure resolves the waiting callers (issue 15.3): none hangs."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from miles_sdk.rewards import _pool
from miles_sdk.rewards._pool import RewardPoolError, missing_main_guard, run_cpu_bound, shutdown_reward_workers

GUARD_HINT = 'if __name__ == "__main__":'


@pytest.fixture(autouse=True)
def _fresh_workers() -> Iterator[None]:
    shutdown_reward_workers()
    yield
    shutdown_reward_workers()


def _fake_main(monkeypatch: pytest.MonkeyPatch, path: Path, source: str) -> None:
    path.write_text(source)
    main = types.ModuleType("__main__")
    main.__file__ = str(path)
    monkeypatch.setitem(sys.modules, "__main__", main)


def _double(x: int) -> int:
    return 2 * x


def test_script_without_main_guard_gets_a_message_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Old code: spawn re-imports the script in each worker (here it exits at once; a real script
    # would load a model and train), and the caller waits forever or gets "worker died".
    _fake_main(monkeypatch, tmp_path / "train.py", "raise SystemExit(3)\n")
    assert missing_main_guard() == str(tmp_path / "train.py")

    async def go() -> None:
        await asyncio.wait_for(run_cpu_bound(1, _double, 2), 60)

    with pytest.raises(RewardPoolError, match="train.py has no") as err:
        asyncio.run(go())
    assert GUARD_HINT in str(err.value) and "reward_num_workers=0" in str(err.value)


def test_script_with_main_guard_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_main(monkeypatch, tmp_path / "ok.py", 'x = 1\n\nif __name__ == "__main__":\n    print(x)\n')
    assert missing_main_guard() is None


def test_queued_call_cancelled_by_shutdown_fails_instead_of_hanging() -> None:
    # Two grader threads are busy; a third call waits in the executor queue. Shutting the
    # workers down cancels it: old code raised CancelledError inside a loop callback (logged)
    # and the caller's future never resolved.
    release = threading.Event()
    started = threading.Semaphore(0)

    def busy() -> str:
        started.release()
        release.wait(30)
        return "done"

    async def go() -> list[object]:
        first = [asyncio.ensure_future(run_cpu_bound(0, busy)) for _ in range(_pool.GRADER_THREADS)]
        await asyncio.sleep(0)
        for _ in first:
            await asyncio.to_thread(started.acquire)
        queued = asyncio.ensure_future(run_cpu_bound(0, _double, 4))
        await asyncio.sleep(0)  # let it flush into the executor queue
        await asyncio.sleep(0)
        shutdown_reward_workers()
        release.set()
        return await asyncio.wait_for(asyncio.gather(*first, queued, return_exceptions=True), 20)

    results = asyncio.run(go())
    assert results[:-1] == ["done"] * _pool.GRADER_THREADS
    assert isinstance(results[-1], RewardPoolError) and "shut down or resized" in str(results[-1])


def test_flush_that_cannot_submit_fails_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(num_workers: int) -> object:
        raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(_pool, "_get_pool", broken)

    async def go() -> list[object]:
        calls = [run_cpu_bound(1, _double, i) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

    results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) and "cannot schedule" in str(r) for r in results)


def test_pool_timeout_fails_a_call_that_never_gets_a_grade() -> None:
    release = threading.Event()

    def stuck() -> int:
        release.wait(30)
        return 0

    async def go() -> None:
        try:
            await run_cpu_bound(0, stuck, timeout=0.2)
        finally:
            release.set()

    with pytest.raises(RewardPoolError, match=r"no grade from the reward grader threads after 0.2 s \(stuck\)"):
        asyncio.run(go())
