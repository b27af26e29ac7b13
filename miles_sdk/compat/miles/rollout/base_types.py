"""Shim of ``miles.rollout.base_types``: the rollout outputs are miles_sdk's.

``RolloutFnTrainOutput(samples, metrics)`` and ``RolloutFnEvalOutput(data, metrics)`` take the same
arguments as Miles's; ``metrics`` defaults to ``{}`` rather than None. Miles's newer calling
convention (``GenerateFnInput`` / ``GenerateFnOutput``, ``RolloutFn*Input``,
``RolloutFnConstructorInput``) comes from ``generate_hub._convention``; the hook loader adapts
functions and classes written that way.
"""

from __future__ import annotations

from miles_sdk.compat.miles.rollout.generate_hub._convention import (
    GenerateFnInput,
    GenerateFnOutput,
    RolloutFnConstructorInput,
    RolloutFnEvalInput,
    RolloutFnInput,
    RolloutFnTrainInput,
)
from miles_sdk.types import RolloutFnEvalOutput, RolloutFnTrainOutput

__all__ = [
    "GenerateFnInput",
    "GenerateFnOutput",
    "RolloutFnConstructorInput",
    "RolloutFnEvalInput",
    "RolloutFnEvalOutput",
    "RolloutFnInput",
    "RolloutFnTrainInput",
    "RolloutFnTrainOutput",
]
