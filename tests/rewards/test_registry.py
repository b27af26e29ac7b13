"""Built-in rm type selection, the boxed_ prefix, random types and the worker pool."""

from __future__ import annotations

from typing import Any

import pytest

from miles_sdk.config import Config
from miles_sdk.rewards import RewardConfigError, compute_builtin_reward, resolve_rm_type, score_builtin_sync
from miles_sdk.types import Sample


def _cfg(**kw: Any) -> Config:
    kw.setdefault("reward_num_workers", 0)
    return Config(**kw)


def test_selection_order_metadata_then_config() -> None:
    args = _cfg(rm_type="math")
    assert resolve_rm_type(args, Sample(metadata={"rm_type": "f1"})) == "f1"
    assert resolve_rm_type(args, Sample(metadata={"rm_type": " "})) == "math"
    assert resolve_rm_type(args, Sample()) == "math"


def test_no_or_unknown_rm_type_is_a_clear_error() -> None:
    with pytest.raises(RewardConfigError, match="set Config.rm_type"):
        resolve_rm_type(_cfg(), Sample())
    # A per-sample rm_type from metadata is checked when the sample is scored ...
    with pytest.raises(RewardConfigError, match="unknown rm_type 'maths'.*known: math"):
        resolve_rm_type(_cfg(), Sample(metadata={"rm_type": "maths"}))
    # ... and the Config's own rm_type when the Config is built.
    from miles_sdk.config import ConfigError

    with pytest.raises(ConfigError, match="unknown rm_type 'maths' \\(did you mean math\\?\\)"):
        _cfg(rm_type="maths")


@pytest.mark.parametrize(
    ("rm_type", "response", "label", "expected"),
    [
        ("math", r"\boxed{42}", "42", 1.0),
        ("f1", "hello world", "hello world", 1.0),
        ("deepscaler", r"</think>\boxed{42}", "42", 1.0),
        ("gpqa", "Answer: A", "A", 1.0),
        # boxed_ grades the last box's content with the type's comparison: Miles scores 0 here
        ("boxed_math", r"so \boxed{42}", "42", 1.0),
        ("boxed_math", r"\boxed{41}", "42", 0.0),
        ("boxed_deepscaler", r"thinking \boxed{42}", "42", 1.0),
        ("boxed_f1", r"Final answer is \boxed{hello world}", "hello world", 1.0),
        ("boxed_gpqa", r"A looks good but \boxed{C}", "C", 1.0),
        ("boxed_math", "no box", "42", 0.0),
        ("boxed_f1", "hello world, no box", "hello world", 0.0),
    ],
)
async def test_builtin_types(rm_type: str, response: str, label: str, expected: float) -> None:
    sample = Sample(response=response, label=label)
    assert await compute_builtin_reward(_cfg(rm_type=rm_type), sample) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"Answer: 7 ... \boxed{42}", {"score": 1.0, "acc": True, "pred": "42"}),
        (r"\boxed{41}", {"score": -1.0, "acc": False, "pred": "41"}),
        ("Answer: 42 but no box", {"score": -1.0, "acc": False, "pred": "[INVALID]"}),
    ],
)
def test_boxed_dapo_works(response: str, expected: dict[str, Any]) -> None:
    assert score_builtin_sync("boxed_dapo", response, "42", {}, []) == expected


def test_dapo_returns_a_dict() -> None:
    assert score_builtin_sync("dapo", "Answer: 42", "42", {}, []) == {"score": 1.0, "acc": True, "pred": "42"}


def test_deterministic_random_is_a_function_of_tokens_and_response() -> None:
    import hashlib

    got = score_builtin_sync("deterministic_random", "hello", None, {}, [1, 2, 3])
    assert got == float(hashlib.sha256(b"[1, 2, 3]hello").digest()[0] % 2)
    by_response = {score_builtin_sync("deterministic_random", f"r{i}", None, {}, [1]) for i in range(20)}
    by_tokens = {score_builtin_sync("deterministic_random", "same", None, {}, [i]) for i in range(20)}
    assert by_response == by_tokens == {0.0, 1.0}


def test_random_gives_both_values() -> None:
    assert {score_builtin_sync("random", "", None, {}, []) for _ in range(64)} == {0.0, 1.0}


def test_missing_label_raises_instead_of_scoring() -> None:
    with pytest.raises(ValueError, match="'f1' needs a label"):
        score_builtin_sync("f1", "text", None, {}, [])


async def test_math_in_worker_processes_and_crash_recovery() -> None:
    """reward_num_workers > 0: graded in spawned processes, where math-verify keeps its alarms.
    A worker that dies fails only the calls it held; the next call gets a fresh pool."""
    import os

    from miles_sdk.rewards import shutdown_reward_workers
    from miles_sdk.rewards._pool import run_cpu_bound

    args = Config(rm_type="math", reward_num_workers=1)
    try:
        sample = Sample(response=r"\boxed{\frac{\sqrt2}{2}}", label=r"\sqrt{2}/2")  # needs sympy
        assert await compute_builtin_reward(args, sample) == 1.0
        assert await compute_builtin_reward(args, Sample(response=r"\boxed{3}", label="4")) == 0.0
        with pytest.raises(RuntimeError, match="reward worker process died"):
            await run_cpu_bound(1, os._exit, 3)
        sample = Sample(response=r"\boxed{(x+1)^2}", label="x^2+2x+1")  # needs sympy: fresh pool
        assert await compute_builtin_reward(args, sample) == 1.0
    finally:
        shutdown_reward_workers()


def _fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x * 10


async def test_one_failure_in_a_chunk_leaves_the_others() -> None:
    import asyncio

    from miles_sdk.rewards._pool import run_cpu_bound

    results = await asyncio.gather(
        *(run_cpu_bound(0, _fails_on_two, i) for i in range(5)), return_exceptions=True
    )
    assert results[:2] == [0, 10] and results[3:] == [30, 40]
    assert isinstance(results[2], ValueError) and str(results[2]) == "two"


def test_builtin_reward_is_a_reward_fn() -> None:
    from miles_sdk.hooks import RewardFn

    hook: RewardFn = compute_builtin_reward  # mypy checks the signature against the Protocol
    assert callable(hook)
