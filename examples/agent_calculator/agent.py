"""The calculator environment, the agent and its reward: what a user of the ``openai`` client writes.

The agent knows nothing of miles_sdk: it gets an OpenAI ``base_url``, offers the model an ``add``
tool, runs the tool calls the model makes, sends the results back and returns the final answer.
Load it with ``--custom-agent-function-path examples.agent_calculator.agent.calculator_agent``.
"""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam

from miles_sdk.config import Config
from miles_sdk.types import Sample

__all__ = ["ADD_TOOL", "calculator_agent", "reward_fn", "run_tool"]

ADD_TOOL: ChatCompletionFunctionToolParam = {"type": "function", "function": {"name": "add"}}
"""The one tool (a short spec keeps the tiny policy's prompt short; real agents describe parameters)."""

MAX_TURNS = 3


def run_tool(name: str, arguments: dict[str, Any]) -> str:
    """The environment: ``add(a, b)``; anything else is an error message the model sees."""
    if name != "add":
        return f"error: unknown tool {name!r}"
    try:
        return str(int(arguments["a"]) + int(arguments["b"]))
    except (KeyError, TypeError, ValueError) as exc:
        return f"error: add needs integer a and b ({exc})"


async def calculator_agent(
    *, base_url: str, prompt: Any, request_kwargs: dict[str, Any], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Ask, run tool calls, ask again, until the model answers in text (or MAX_TURNS)."""
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": prompt}]
    tool_calls = 0
    answer = ""
    for _ in range(MAX_TURNS):
        reply = await client.chat.completions.create(
            model="policy", messages=messages, tools=[ADD_TOOL], **request_kwargs
        )
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            answer = message.content or ""
            break
        for call in message.tool_calls:
            if call.type != "function":
                continue
            tool_calls += 1
            result = run_tool(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return {"answer": answer, "tool_calls": tool_calls}


async def reward_fn(args: Config, sample: Sample) -> float:
    """1 when the agent's final answer is the sum (the agent left it in the metadata), else 0."""
    return 1.0 if str(sample.metadata.get("answer", "")).strip() == sample.label else 0.0
