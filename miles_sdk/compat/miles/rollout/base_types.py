"""Shim of ``miles.rollout.base_types``: the rollout outputs are miles_sdk's.

``RolloutFnTrainOutput(samples, metrics)`` and ``RolloutFnEvalOutput(data, metrics)`` take the same
arguments as Miles's; ``metrics`` defaults to ``{}`` rather than None. Miles's newer
``RolloutFn*Input`` / ``GenerateFnInput`` calling convention is not provided.
"""

from __future__ import annotations

from miles_sdk.types import RolloutFnEvalOutput, RolloutFnTrainOutput

__all__ = ["RolloutFnEvalOutput", "RolloutFnTrainOutput"]
