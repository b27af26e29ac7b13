"""Shim of ``miles.rollout.generate_hub.agentic_tool_call``: run ``--custom-agent-function-path``
against a recorded chat session (:func:`miles_sdk.agents.run_agent`).

Miles starts a separate session server (``--use-session-server``); here the endpoint runs
in-process on loopback, so that flag is not needed (and is accepted). ``max_seq_len``,
``agent_timeout`` and ``agent_sample_mode`` apply; see docs/agents.md.
"""

from __future__ import annotations

from miles_sdk.agents.generate import build_chat_request_kwargs, load_agent_fn, run_agent
from miles_sdk.compat.miles.rollout.generate_hub._convention import GenerateFnInput, GenerateFnOutput
from miles_sdk.engines.base import SamplingParams

__all__ = ["build_chat_request_kwargs", "generate"]


async def generate(input: GenerateFnInput) -> GenerateFnOutput:
    params = SamplingParams(**input.sampling_params)  # type: ignore[typeddict-item]
    samples = await run_agent(input.args, input.sample, params, load_agent_fn(input.args))
    return GenerateFnOutput(samples=samples[0] if len(samples) == 1 else samples)
