"""Train any agent that speaks the OpenAI chat API, on the exact tokens the engine generated.

- :class:`AgentEndpoint`: ``/v1/chat/completions`` (+ ``/v1/models``) over the inference engine on
  loopback, recording each session's prompt ids, generated ids, log-probs and weight version.
- :func:`generate_with_agent`: the GenerateFn that runs an :class:`~miles_sdk.hooks.AgentFn`
  (``--custom-agent-function-path``) against a fresh session and returns its trajectories as
  Samples, tool outputs and template tokens masked out of the loss.
- :func:`parse_tool_calls`: Qwen / Hermes ``<tool_call>`` JSON -> OpenAI ``tool_calls``.

See docs/agents.md.
"""

from miles_sdk.agents.endpoint import AgentEndpoint
from miles_sdk.agents.generate import (
    build_chat_request_kwargs,
    close_agent_endpoints,
    generate_with_agent,
    get_agent_endpoint,
    run_agent,
)
from miles_sdk.agents.session import ChatRenderer, Session, SessionStore, TurnRecord
from miles_sdk.agents.tool_calls import ParsedTurn, parse_tool_calls
from miles_sdk.agents.trajectory import records_to_samples

__all__ = [
    "AgentEndpoint",
    "ChatRenderer",
    "ParsedTurn",
    "Session",
    "SessionStore",
    "TurnRecord",
    "build_chat_request_kwargs",
    "close_agent_endpoints",
    "generate_with_agent",
    "get_agent_endpoint",
    "parse_tool_calls",
    "records_to_samples",
    "run_agent",
]
