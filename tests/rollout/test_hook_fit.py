"""The stock rollout pieces satisfy the hook Protocols they are used as (checked by mypy too)."""

from __future__ import annotations

from miles_sdk.engines.base import InferenceEngine
from miles_sdk.hooks import DynamicSamplingFilterFn, GenerateFn, RolloutFn
from miles_sdk.rollout import (
    check_no_aborted,
    check_reward_nonzero_std,
    generate_rollout,
    generate_with_engine,
)
from miles_sdk.testing.engine import ScriptedEngine

rollout_fn: RolloutFn = generate_rollout
generate_fn: GenerateFn = generate_with_engine
filters: list[DynamicSamplingFilterFn] = [check_reward_nonzero_std, check_no_aborted]


def test_stock_pieces_fit_their_protocols() -> None:
    engine: InferenceEngine = ScriptedEngine([1, 2])
    assert isinstance(engine, InferenceEngine)
    assert callable(rollout_fn) and callable(generate_fn) and len(filters) == 2
