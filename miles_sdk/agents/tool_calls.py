"""Tool calls in generated text -> OpenAI ``tool_calls``: the Qwen / Hermes ``<tool_call>`` format.

Qwen2.5/Qwen3, Hermes and the tiny test tokenizer (:mod:`miles_sdk.testing.tiny`) all emit a call as
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, several in a row for parallel
calls. As SGLang's and vLLM's parsers do, a turn whose markup does not parse (bad JSON, no name, a
tool the request did not offer) is returned whole as text with no ``tool_calls``: the agent sees what
the model wrote, and the tokens trained on are the same either way.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from typing import Any

import attrs

__all__ = ["ParsedTurn", "parse_tool_calls"]

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@attrs.frozen
class ParsedTurn:
    """An assistant turn split into its text and its tool calls (OpenAI shape)."""

    content: str | None
    """The text outside the tool-call markup (None when there is none, as OpenAI returns)."""
    tool_calls: list[dict[str, Any]]
    """``[{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}]``."""
    error: str | None = None
    """Why markup that looked like a tool call was returned as text (for logs), else None."""


def _one_call(body: str, tool_names: Collection[str] | None) -> dict[str, Any] | str:
    """The OpenAI tool call in one ``<tool_call>`` body, or the reason it is not one."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"tool call is not JSON ({exc.msg} at char {exc.pos})"
    if not isinstance(payload, dict):
        return f"tool call is a JSON {type(payload).__name__}, not an object"
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return "tool call has no string 'name'"
    if tool_names is not None and name not in tool_names:
        return f"tool call names {name!r}, which is not among the request's tools {sorted(tool_names)}"
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return "tool call 'arguments' is a string that is not JSON"
    if not isinstance(arguments, dict):
        return f"tool call 'arguments' is a JSON {type(arguments).__name__}, not an object"
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_tool_calls(text: str, tool_names: Collection[str] | None = None) -> ParsedTurn:
    """Split ``text`` into content and tool calls.

    ``tool_names``: the names offered in the request's ``tools``; a call to another name makes the
    turn plain text (None accepts any name). An opening ``<tool_call>`` without its closing tag
    (a turn cut by ``max_tokens``) is text too.
    """
    bodies = list(_CALL.finditer(text))
    if not bodies:
        unclosed = "<tool_call>" in text
        return ParsedTurn(text or None, [], "unclosed <tool_call>" if unclosed else None)
    calls: list[dict[str, Any]] = []
    for match in bodies:
        call = _one_call(match.group(1).strip(), tool_names)
        if isinstance(call, str):
            return ParsedTurn(text or None, [], call)
        calls.append(call)
    rest = _CALL.sub("", text)
    if "<tool_call>" in rest:
        return ParsedTurn(text or None, [], "unclosed <tool_call>")
    content = rest.strip()
    return ParsedTurn(content or None, calls)
