"""Prompt rendering: rows' prompts -> chat messages -> the text the engine is prompted with.

The data stage renders chat prompts once, at load time, exactly as Miles does: through the
tokenizer's own chat template with ``add_generation_prompt=True``, so the rendered text ends
where the assistant's answer begins. Token counts use ``add_special_tokens=False``, which is how
the default rollout tokenises ``sample.prompt``; the length filter and the engine therefore agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from miles_sdk.types import ChatMessage, Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PromptError",
    "check_prompt",
    "count_prompt_tokens",
    "has_chat_template",
    "render_chat_prompt",
    "to_messages",
]

logger = logging.getLogger(__name__)


class PromptError(ValueError):
    """A prompt that cannot be used: wrong type, bad messages, or a chat template that fails."""


def to_messages(prompt: Prompt) -> list[ChatMessage]:
    """A prompt as chat messages: a string becomes one user turn; messages are copied shallowly.

    >>> to_messages("2+2?")
    [{'role': 'user', 'content': '2+2?'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def check_prompt(value: object, where: str, key: str) -> Prompt:
    """Validate a row's prompt: a string, or a non-empty list of ``{"role": ..., ...}`` dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        messages: list[ChatMessage] = []
        for i, message in enumerate(value):
            if not isinstance(message, Mapping) or "role" not in message:
                raise PromptError(
                    f"{where}: {key!r} message {i} is {message!r}; chat messages must be dicts with a 'role'"
                )
            messages.append(dict(message))
        if not messages:
            raise PromptError(f"{where}: {key!r} is an empty list of chat messages")
        return messages
    raise PromptError(
        f"{where}: {key!r} is a {type(value).__name__}; a prompt must be a string or a list of chat messages"
    )


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` carries a chat template (HF tokenizers without one raise on use)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    *,
    tools: list[Any] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    where: str = "prompt",
) -> str:
    """Render ``prompt`` through the tokenizer's chat template, ending with the generation prompt.

    ``tools`` (OpenAI-style function specs) go to the template's ``tools`` variable;
    ``chat_template_kwargs`` (``--apply-chat-template-kwargs``, e.g. ``enable_thinking``) are
    passed through. ``where`` names the row in errors.
    """
    messages = to_messages(prompt)
    kwargs = dict(chat_template_kwargs or {})
    for reserved in ("tokenize", "add_generation_prompt", "tools"):
        if reserved in kwargs:
            raise PromptError(f"apply_chat_template_kwargs may not set {reserved!r}: the data stage sets it")
    try:
        rendered = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
        )
    except Exception as exc:  # jinja errors, missing template: name the row, keep the cause
        raise PromptError(
            f"{where}: the tokenizer's chat template failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(rendered, str):
        raise PromptError(
            f"{where}: apply_chat_template(tokenize=False) returned {type(rendered).__name__}, expected str"
        )
    return rendered


def count_prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[int]:
    """Token count of each prompt, tokenised as the rollout does (no special tokens added)."""
    if not prompts:
        return []
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]
