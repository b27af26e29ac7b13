"""bench/rollout_pipeline.py runs: the demo's rollout against an instant engine keeps its 16 x 16
samples in one wave (the smoke test keeps the bench working as the rollout changes)."""

from __future__ import annotations

import math

from bench.rollout_pipeline import main


def test_the_instant_engine_rollout_keeps_the_demo_batch() -> None:
    result = main(["--rollouts", "1"])
    assert result["samples"] == 256
    assert math.isfinite(result["median_s"]) and result["median_s"] > 0
