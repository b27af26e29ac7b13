"""call_hook runs sync and async hooks anywhere; check_hook is the Trainer's conformance check."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Generator
from typing import Any, assert_type

import pytest

from miles_sdk.config import Config
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.loading import HookSignatureError
from miles_sdk.testing.builders import make_sample
from miles_sdk.testing.hooks import call_hook, check_hook, run_sync
from miles_sdk.types import Sample

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_var", default="unset")


async def exact_match(args: Config, sample: Sample) -> float:
    await asyncio.sleep(0)
    return float(sample.response.strip() == sample.label)


def sync_post(args: Config, samples: list[Sample]) -> tuple[list[float], list[float]]:
    raw = [s.get_reward_value() for s in samples]
    return raw, [r - 0.5 for r in raw]


def test_async_hook_from_sync_test() -> None:
    cfg = Config()
    reward = call_hook(exact_match, cfg, make_sample("1+1=", "2", label="2"))
    assert_type(reward, float)
    assert reward == 1.0
    assert call_hook(exact_match, cfg, make_sample("1+1=", "3", label="2")) == 0.0


def test_sync_hook_returns_its_value() -> None:
    raw, norm = call_hook(sync_post, Config(), [make_sample(reward=1.0), make_sample(reward=0.0)])
    assert (raw, norm) == ([1.0, 0.0], [0.5, -0.5])


async def test_async_hook_inside_running_loop_keeps_context_vars() -> None:
    async def reads_var(args: Config, sample: Sample) -> str:
        await asyncio.sleep(0)
        return f"{_VAR.get()} on {threading.current_thread().name}"

    token = _VAR.set("installed")
    try:
        result = call_hook(reads_var, Config(), make_sample())
    finally:
        _VAR.reset(token)
    # It ran on a helper thread (the test's loop is busy) and still saw the caller's context.
    assert result == "installed on miles_sdk-call_hook"


async def test_exception_inside_running_loop_is_reraised_unchanged() -> None:
    async def broken(args: Config, sample: Sample) -> float:
        raise KeyError("no label")

    with pytest.raises(KeyError, match="no label"):
        call_hook(broken, Config(), make_sample())


def test_exception_without_loop_is_reraised_unchanged() -> None:
    async def broken(args: Config, sample: Sample) -> float:
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        call_hook(broken, Config(), make_sample())


class _Ready:
    """An awaitable that is not a coroutine (like a Future-ish object a hook might return)."""

    def __await__(self) -> Generator[Any, None, int]:
        yield from asyncio.sleep(0).__await__()
        return 7


def test_plain_awaitables_are_awaited() -> None:
    assert call_hook(lambda: _Ready()) == 7
    assert run_sync(_Ready()) == 7


def test_check_hook_accepts_a_conforming_reward() -> None:
    check_hook(exact_match, RewardFn)
    check_hook(exact_match, "RewardFn", name="--custom-rm-path")


def test_check_hook_accepts_a_plain_def_reward_and_rejects_wrong_arity() -> None:
    def sync_rm(args: Config, sample: Sample) -> float:
        return 1.0

    async def one_arg(sample: Sample) -> float:
        return 1.0

    check_hook(sync_rm, RewardFn)  # a plain def reward runs in a thread pool (issue 14.6)
    with pytest.raises(HookSignatureError, match="my_rm"):
        check_hook(one_arg, RewardFn, name="my_rm")
    with pytest.raises(HookSignatureError):
        check_hook(exact_match, GenerateFn)
