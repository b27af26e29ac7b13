"""The GenerateFn that drives an :class:`~miles_sdk.hooks.AgentFn` and trains on what it generated.

For each sample: open a session on the loopback chat endpoint (started on first use, one per event
loop and engine), call the agent with its ``base_url``, the prompt, the sampling settings as chat
request keywords and the sample's metadata, then turn the session's records into Samples
(:func:`~miles_sdk.agents.trajectory.records_to_samples`). The agent's returned dict is merged
into every sample's metadata, where the reward function reads it (Miles's contract).

An agent that raises or exceeds ``agent_timeout`` yields one FAILED sample with the reason in
``metadata["agent_error"]`` (its group is dropped and counted, the rollout goes on); an agent that
made no model call yields an ABORTED sample, as in Miles.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from miles_sdk.agents.endpoint import AgentEndpoint
from miles_sdk.agents.trajectory import records_to_samples
from miles_sdk.engines.base import InferenceEngine, SamplingParams
from miles_sdk.rollout.context import get_rollout_context
from miles_sdk.types import Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config
    from miles_sdk.hooks import AgentFn

__all__ = [
    "build_chat_request_kwargs",
    "close_agent_endpoints",
    "generate_with_agent",
    "get_agent_endpoint",
    "load_agent_fn",
    "run_agent",
]

logger = logging.getLogger(__name__)

_OPENAI_KEYS = {
    "max_new_tokens": "max_tokens",
    "sampling_seed": "seed",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
}
_EXTRA_KEYS = ("top_k", "ignore_eos", "skip_special_tokens")

_ENDPOINTS: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, AgentEndpoint]] = {}
_AGENTS: dict[str, AgentFn] = {}


def build_chat_request_kwargs(sampling_params: Mapping[str, Any]) -> dict[str, Any]:
    """SGLang sampling params -> ``chat.completions.create`` keywords (Miles's mapping).

    OpenAI's own keys go at the top level; SGLang's extensions (``top_k``, ``ignore_eos``,
    ``skip_special_tokens``) under ``extra_body``, which the ``openai`` client forwards and the
    endpoint reads.
    """
    kwargs: dict[str, Any] = {}
    for src, dst in _OPENAI_KEYS.items():
        if sampling_params.get(src) is not None:
            kwargs[dst] = sampling_params[src]
    extra = {k: sampling_params[k] for k in _EXTRA_KEYS if sampling_params.get(k) is not None}
    if extra.get("top_k") == -1:
        del extra["top_k"]
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


async def get_agent_endpoint(args: Config, engine: InferenceEngine, tokenizer: Any) -> AgentEndpoint:
    """The running endpoint for ``engine`` in this event loop (started on first call)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), id(engine))
    found = _ENDPOINTS.get(key)
    if found is not None and found[0] is loop and not loop.is_closed():
        return found[1]
    endpoint = AgentEndpoint(
        engine,
        tokenizer,
        model_name=args.hf_checkpoint or "policy",
        max_seq_len=args.max_seq_len or args.rollout_max_context_len,
        default_max_tokens=args.rollout_max_response_len,
        chat_template_kwargs=dict(args.apply_chat_template_kwargs),
    )
    await endpoint.start()
    _ENDPOINTS[key] = (loop, endpoint)
    return endpoint


async def close_agent_endpoints() -> None:
    """Stop the endpoints started in the running loop (the Trainer calls it on close)."""
    loop = asyncio.get_running_loop()
    for key, (owner, endpoint) in list(_ENDPOINTS.items()):
        if owner is loop:
            del _ENDPOINTS[key]
            await endpoint.close()


def load_agent_fn(args: Config) -> AgentFn:
    """The checked AgentFn named by ``custom_agent_function_path`` (loaded once per path)."""
    path = args.custom_agent_function_path
    if path is None:
        raise ValueError(
            "generate_with_agent needs an agent: set custom_agent_function_path "
            "(--custom-agent-function-path pkg.module.agent_fn)"
        )
    fn = _AGENTS.get(path)
    if fn is None:
        from miles_sdk.loading import load_hook

        fn = load_hook(path, "AgentFn", flag="--custom-agent-function-path")
        _AGENTS[path] = fn
    return fn


def _failed(sample: Sample, reason: str) -> Sample:
    out = copy.deepcopy(sample)
    out.status = Sample.Status.FAILED
    out.metadata["agent_error"] = reason
    logger.warning("agent failed for sample index=%s: %s", sample.index, reason)
    return out


async def run_agent(
    args: Config, sample: Sample, sampling_params: SamplingParams, agent: AgentFn
) -> list[Sample]:
    """Run ``agent`` on ``sample`` through a fresh session; its samples (at least one)."""
    ctx = get_rollout_context()
    if ctx.tokenizer is None:
        raise ValueError(
            "generate_with_agent needs RolloutContext.tokenizer (the chat template renders the messages)"
        )
    endpoint = await get_agent_endpoint(args, ctx.engine, ctx.tokenizer)
    session = endpoint.sessions.create()
    metadata = dict(sample.metadata)
    if args.max_seq_len is not None:
        metadata["max_seq_len"] = args.max_seq_len
    metadata["session_id"] = session.id
    started = time.monotonic()
    error: str | None = None
    result: object = None
    try:
        call = agent(
            base_url=endpoint.session_url(session),
            prompt=sample.prompt,
            request_kwargs=build_chat_request_kwargs(sampling_params),
            metadata=metadata,
        )
        result = await asyncio.wait_for(call, timeout=args.agent_timeout)
    except TimeoutError:
        error = f"agent {args.custom_agent_function_path or agent!r} did not return within agent_timeout={args.agent_timeout}s"
    except Exception as exc:  # noqa: BLE001 - the agent's bug or its environment's: this sample fails, the rollout goes on
        error = f"agent {args.custom_agent_function_path or agent!r} raised {type(exc).__name__}: {exc}"
    finally:
        # Wait for a turn still being served (its lock), then close: later requests get 404.
        async with session.lock:
            endpoint.sessions.close(session.id)
    if error is None and result is not None and not isinstance(result, Mapping):
        error = f"agent returned {type(result).__name__}; expected a dict (merged into metadata) or None"
    if error is not None and not (session.context_exceeded and session.records):
        return [_failed(sample, error)]
    if not session.records:
        out = copy.deepcopy(sample)
        out.status = Sample.Status.ABORTED
        out.metadata["agent_error"] = "the agent made no model call"
        return [out]
    samples = records_to_samples(
        sample, session.records, endpoint.renderer, mode=args.agent_sample_mode, max_seq_len=args.max_seq_len
    )
    agent_metadata = dict(result) if isinstance(result, Mapping) else {}
    tool_time = (agent_metadata.get("agent_metrics") or {}).get("total_tool_time")
    for s in samples:
        if error is not None:  # the agent gave up when the session reached max_seq_len: train on what it did
            s.status = Sample.Status.TRUNCATED
            s.metadata["agent_error"] = error
        s.metadata.update(agent_metadata)
        s.metadata["agent_seconds"] = time.monotonic() - started
        if session.discarded:
            s.metadata["agent_discarded_turns"] = session.discarded
        if isinstance(tool_time, (int, float)):
            s.non_generation_time = float(tool_time)
    return samples


async def generate_with_agent(
    args: Config, sample: Sample, sampling_params: SamplingParams
) -> Sample | list[Sample]:
    """A :class:`~miles_sdk.hooks.GenerateFn` running ``args.custom_agent_function_path``.

    Returns one Sample per trajectory (``agent_sample_mode="trajectory"``, usually exactly one)
    or per turn (``"turn"``); a single Sample when there is one.
    """
    samples = await run_agent(args, sample, sampling_params, load_agent_fn(args))
    return samples[0] if len(samples) == 1 else samples
