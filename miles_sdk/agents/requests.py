"""An OpenAI ``/v1/chat/completions`` body, checked and turned into engine sampling parameters.

Every refusal is a :class:`ChatRequestError` (HTTP 400) whose message names the field, so the
``openai`` client raises ``BadRequestError`` with a reason the agent's author can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from miles_sdk.engines.base import SamplingParams
from miles_sdk.types import ChatMessage

__all__ = ["ChatRequest", "ChatRequestError", "parse_chat_request"]

_ROLES = ("system", "developer", "user", "assistant", "tool")
_MAX_N = 64


class ChatRequestError(ValueError):
    """A chat request the endpoint refuses (HTTP 400, or ``status``)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@attrs.frozen
class ChatRequest:
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] | None
    tool_names: frozenset[str]
    parse_tools: bool
    """False under ``tool_choice="none"`` or without tools: the reply is text only."""
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    max_tokens: int | None
    params: SamplingParams
    """Everything but ``max_new_tokens`` (set per request from the budget)."""
    model: str


def _text(content: object, where: str) -> str | None:
    """OpenAI content: a string, null, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ChatRequestError(f"{where}.content[{i}]: only text parts are supported, got {part!r}")
            parts.append(part["text"])
        return "".join(parts)
    raise ChatRequestError(f"{where}.content must be a string, null or a list of text parts")


def _message(raw: object, i: int) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(raw, Mapping):
        raise ChatRequestError(f"{where} must be an object with 'role' and 'content'")
    role = raw.get("role")
    if role not in _ROLES:
        raise ChatRequestError(f"{where}.role is {role!r}; expected one of {list(_ROLES)}")
    message: ChatMessage = {
        "role": "system" if role == "developer" else role,
        "content": _text(raw.get("content"), where),
    }
    calls = raw.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise ChatRequestError(f"{where}.tool_calls must be a list on an assistant message")
        checked = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                raise ChatRequestError(f"{where}.tool_calls[{j}] needs function.name and function.arguments")
            checked.append(
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments", "{}")},
                }
            )
        message["tool_calls"] = checked
    if role == "tool":
        if message["content"] is None:
            raise ChatRequestError(f"{where}: a tool message needs 'content' (the tool's result)")
        message["tool_call_id"] = raw.get("tool_call_id")
        if isinstance(raw.get("name"), str):
            message["name"] = raw["name"]
    elif message["content"] is None and not calls:
        raise ChatRequestError(f"{where} ({role}) has neither content nor tool_calls")
    if message["content"] is None:
        message["content"] = ""
    return message


def _tools(raw: object) -> tuple[list[dict[str, Any]] | None, frozenset[str]]:
    if raw is None:
        return None, frozenset()
    if not isinstance(raw, list):
        raise ChatRequestError("tools must be a list of {'type': 'function', 'function': {...}}")
    names = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ChatRequestError(f"tools[{i}] needs function.name")
        names.append(fn["name"])
    return (list(raw) or None), frozenset(names)


def _number(body: Mapping[str, Any], key: str, kind: type, low: float | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ChatRequestError(f"{key} must be a {kind.__name__}, got {value!r}")
    if low is not None and value < low:
        raise ChatRequestError(f"{key} must be >= {low}, got {value!r}")
    return kind(value)


def parse_chat_request(body: Mapping[str, Any], *, default_model: str) -> ChatRequest:
    extra = body.get("extra_body")
    if isinstance(extra, Mapping):  # a raw HTTP client that spread Miles's request_kwargs into the body
        body = {**extra, **{k: v for k, v in body.items() if k != "extra_body"}}
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ChatRequestError("messages must be a non-empty list of {'role', 'content'} objects")
    messages = [_message(m, i) for i, m in enumerate(raw_messages)]
    tools, names = _tools(body.get("tools"))
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, Mapping):
        forced = (
            (choice.get("function") or {}).get("name")
            if isinstance(choice.get("function"), Mapping)
            else None
        )
        if forced not in names:
            raise ChatRequestError(
                f"tool_choice names function {forced!r}, which is not among tools {sorted(names)}"
            )
    elif choice not in ("auto", "none", "required"):
        raise ChatRequestError(
            f"tool_choice must be 'auto', 'none', 'required' or a function, got {choice!r}"
        )
    n = _number(body, "n", int, 1) or 1
    if n > _MAX_N:
        raise ChatRequestError(f"n must be <= {_MAX_N}, got {n}")
    params = SamplingParams(
        temperature=1.0 if body.get("temperature") is None else _number(body, "temperature", float, 0)
    )
    for key, name, kind in (
        ("top_p", "top_p", float),
        ("top_k", "top_k", int),
        ("seed", "sampling_seed", int),
    ):
        value = _number(body, key, kind)
        if value is not None:
            params[name] = value  # type: ignore[literal-required]
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ChatRequestError("stop must be a string or a list of non-empty strings")
        params["stop"] = list(stop)
    for key in ("ignore_eos", "skip_special_tokens"):
        if isinstance(body.get(key), bool):
            params[key] = body[key]  # type: ignore[literal-required]
    max_tokens = _number(body, "max_completion_tokens", int, 1) or _number(body, "max_tokens", int, 1)
    if _number(body, "top_logprobs", int, 0):
        # The engines return the sampled token's log-prob only; empty lists would look like an answer.
        raise ChatRequestError(
            f"top_logprobs={body['top_logprobs']} is not supported: the engine returns only each sampled "
            "token's log-prob (logprobs=true); send top_logprobs=0 or leave it out",
            code="unsupported_parameter",
        )
    options = body.get("stream_options")
    return ChatRequest(
        messages=messages,
        tools=tools,
        tool_names=names,
        parse_tools=bool(tools) and choice != "none",
        n=n,
        stream=bool(body.get("stream", False)),
        include_usage=isinstance(options, Mapping) and bool(options.get("include_usage")),
        logprobs=bool(body.get("logprobs", False)),
        max_tokens=max_tokens,
        params=params,
        model=str(body.get("model") or default_model),
    )
