"""Shim of ``miles.rollout.generate_hub.multi_turn``: generate, run the tool calls, repeat.

Reads Miles's flags: ``--generate-tool-specs-path`` (the OpenAI tool list, rendered by the chat
template), ``--generate-execute-tool-function-path`` (``async (name, arguments: dict) -> str``),
``--generate-max-turns``. Tool calls are parsed in the ``<tool_call>`` JSON format
(``--generate-tool-call-parser`` qwen25 / qwen / hermes are that format). Tool results are appended
as the chat template renders them, with loss mask 0.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from miles_sdk.agents.tool_calls import parse_tool_calls
from miles_sdk.compat.miles.rollout.generate_hub._convention import GenerateFnInput, GenerateFnOutput
from miles_sdk.engines.base import SamplingParams
from miles_sdk.loading import HookLoadError, _import_attr
from miles_sdk.rollout.context import TokenizerLike, decode_text, get_rollout_context
from miles_sdk.rollout.generate import append_tokens, generate_with_engine
from miles_sdk.types import Sample

__all__ = ["generate", "tokenize_tool_responses"]

_PARSERS = (None, "qwen25", "qwen", "qwen3", "hermes")
ExecuteTool = Callable[[str, dict[str, Any]], Awaitable[str]]


def _load(path: str | None, flag: str) -> Any:
    if path is None:
        raise HookLoadError(f"{flag} is required by miles.rollout.generate_hub.multi_turn.generate")
    return _import_attr(path, flag)


def tokenize_tool_responses(
    tool_messages: list[dict[str, Any]], tokenizer: TokenizerLike, *, turn_ended_with_eos: bool = True
) -> list[int]:
    """The ids the chat template adds after an assistant turn for ``tool_messages``, through the next
    ``assistant`` header (Miles's method: render with and without them after a dummy turn), plus
    what closes the assistant turn (``\\n`` after an EOS the model generated; the EOS too when not)."""
    dummy = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]

    def render(messages: list[dict[str, Any]], generation: bool) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return str(text)

    before = render(dummy, False)
    after = render(dummy + tool_messages, True)
    if not after.startswith(before):
        raise ValueError(
            "the chat template is not append-only for tool messages; multi_turn cannot extend the tokens"
        )
    eos = getattr(tokenizer, "eos_token", None)
    closing = ""
    if isinstance(eos, str) and eos and eos in before:
        at = before.rfind(eos)
        closing = before[at + len(eos) :] if turn_ended_with_eos else before[at:]
    return list(tokenizer.encode(closing + after[len(before) :], add_special_tokens=False))


async def generate(input: GenerateFnInput) -> GenerateFnOutput:
    args, sample = input.args, copy.deepcopy(input.sample)
    if args.generate_tool_call_parser not in _PARSERS:
        raise ValueError(
            f"--generate-tool-call-parser {args.generate_tool_call_parser!r}: only the <tool_call> JSON format "
            f"is parsed here ({[p for p in _PARSERS if p]})"
        )
    ctx = get_rollout_context()
    tok = ctx.tokenizer
    if tok is None:
        raise ValueError("multi_turn.generate needs the rollout's tokenizer")
    tool_specs = cast(
        "list[dict[str, Any]]", _load(args.generate_tool_specs_path, "--generate-tool-specs-path")
    )
    execute = cast(
        "ExecuteTool",
        _load(args.generate_execute_tool_function_path, "--generate-execute-tool-function-path"),
    )
    names = {str(t.get("function", {}).get("name")) for t in tool_specs}
    if not sample.tokens:
        messages = (
            sample.prompt if isinstance(sample.prompt, list) else [{"role": "user", "content": sample.prompt}]
        )
        rendered = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, tools=tool_specs
        )  # type: ignore[call-arg]
        sample.tokens = list(tok.encode(str(rendered), add_special_tokens=False))
        sample.response_length = 0
    params = SamplingParams(**input.sampling_params)  # type: ignore[typeddict-item]
    for _ in range(args.generate_max_turns):
        start = sample.response_length
        sample = await generate_with_engine(args, sample, params)
        if sample.status is not Sample.Status.COMPLETED:
            break
        turn_text = decode_text(tok, sample.response_tokens[start:])
        parsed = parse_tool_calls(turn_text, names)
        if not parsed.tool_calls:
            break
        started = time.monotonic()
        tool_messages = []
        for call in parsed.tool_calls:
            fn = call["function"]
            result = await execute(fn["name"], json.loads(fn["arguments"]))
            tool_messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call.get("id") or uuid.uuid4().hex,
                    "content": str(result),
                    "name": fn["name"],
                }
            )
        sample.non_generation_time += time.monotonic() - started
        eos = getattr(tok, "eos_token", None)
        ended = isinstance(eos, str) and bool(eos) and turn_text.endswith(eos)
        ids = tokenize_tool_responses(tool_messages, tok, turn_ended_with_eos=ended)
        append_tokens(sample, ids, loss_mask_value=0, text=decode_text(tok, ids))
    return GenerateFnOutput(samples=sample)
