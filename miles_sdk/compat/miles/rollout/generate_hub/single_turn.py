"""Shim of ``miles.rollout.generate_hub.single_turn``: one engine call (``generate_with_engine``)."""

from __future__ import annotations

from miles_sdk.compat.miles.rollout.generate_hub._convention import GenerateFnInput, GenerateFnOutput
from miles_sdk.engines.base import SamplingParams
from miles_sdk.rollout.generate import generate_with_engine

__all__ = ["generate"]


async def generate(input: GenerateFnInput) -> GenerateFnOutput:
    params = SamplingParams(**input.sampling_params)  # type: ignore[typeddict-item]
    return GenerateFnOutput(samples=await generate_with_engine(input.args, input.sample, params))
