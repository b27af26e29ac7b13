"""Sessions: what the engine saw and generated for one agent run, token for token.

One session is one agent episode (one rollout sample). Each chat request is a turn: its prompt
token ids, the generated ids, their log-probs and the weight version are kept as a
:class:`TurnRecord`, never re-tokenised from text.

Token-in, token-out (TITO), as Miles's session server does: when a request extends the session's
history (the earlier messages, the assistant reply as it was returned, then new tool/user
messages), its prompt is the previous turn's prompt + generated ids, plus the tokens of the
template text that closes the assistant turn and renders the new messages. The turns then form
one linear *trajectory* that trains as one sample. A request that does not extend the history
(the agent rewrote earlier messages, changed ``tools``, or the template is not append-only, e.g.
it drops past reasoning) is rendered afresh and starts a new trajectory.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from miles_sdk.rollout.context import TokenizerLike, decode_text
from miles_sdk.types import ChatMessage

__all__ = ["ChatRenderer", "Session", "SessionStore", "TurnRecord", "UnknownSessionError"]


class UnknownSessionError(KeyError):
    """A request names a session that does not exist (never created, or already collected)."""


@attrs.frozen
class TurnRecord:
    """One generate call of a session, exactly as the engine ran it."""

    prompt_ids: list[int]
    output_ids: list[int]
    log_probs: list[float]
    """One per output id, from the engine (log_softmax of logits / temperature)."""
    weight_version: int
    finish_reason: str
    """The engine's: ``stop``, ``length`` or ``abort``."""
    trajectory: int
    """Index of the linear trajectory this turn extends (0, 1, ...)."""
    messages: list[ChatMessage]
    """The history the prompt was rendered from, this turn's assistant message last."""


class ChatRenderer:
    """The tokenizer's chat template, as text and as ids (``tokenizer.apply_chat_template``)."""

    def __init__(self, tokenizer: TokenizerLike, template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        eos = getattr(tokenizer, "eos_token", None)
        self.eos_text: str | None = eos if isinstance(eos, str) and eos else None

    def render(
        self, messages: Sequence[ChatMessage], tools: list[dict[str, Any]] | None, *, generation: bool
    ) -> str:
        kwargs: dict[str, Any] = dict(self.template_kwargs)
        if tools:
            kwargs["tools"] = tools
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation, **kwargs
        )
        if not isinstance(text, str):
            raise TypeError(
                f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str"
            )
        return text

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return decode_text(self.tokenizer, ids)


def _normal_args(arguments: object) -> object:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _normal_message(message: ChatMessage) -> tuple[object, ...]:
    """What must agree for a client's echo of a message to count as the stored one.

    Clients add fields (``refusal: None``, ``audio``), drop ``content: None`` or re-serialise
    tool-call arguments; none of that changes the conversation.
    """
    calls = tuple(
        (
            str(c.get("function", {}).get("name")),
            json.dumps(_normal_args(c.get("function", {}).get("arguments")), sort_keys=True),
        )
        for c in (message.get("tool_calls") or [])
        if isinstance(c, dict)
    )
    return (message.get("role"), message.get("content") or "", calls, message.get("tool_call_id"))


def messages_extend(stored: Sequence[ChatMessage], request: Sequence[ChatMessage]) -> bool:
    """True when ``request`` starts with ``stored`` (message by message, normalised) and adds to it."""
    if len(request) <= len(stored):
        return False
    return all(_normal_message(a) == _normal_message(b) for a, b in zip(stored, request, strict=False))


@attrs.define
class Session:
    """The turns of one agent episode; requests on one session are served one at a time."""

    id: str
    records: list[TurnRecord] = attrs.field(factory=list)
    tools: list[dict[str, Any]] | None = None
    trajectories: int = 0
    """How many trajectories the session has started."""
    closed: bool = False
    context_exceeded: bool = False
    """A turn was refused because its prompt reached ``max_seq_len``."""
    discarded: int = 0
    """Turns generated for a client that had gone (disconnected or cancelled): not kept."""
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, repr=False)

    def prompt_ids(
        self, renderer: ChatRenderer, messages: list[ChatMessage], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], int, list[ChatMessage]]:
        """``(prompt ids, trajectory index, effective history)`` for a request on this session.

        The index equals :attr:`trajectories` when the request starts a new trajectory."""
        last = self.records[-1] if self.records else None
        fresh_trajectory = self.trajectories
        if last is None or tools != self.tools or not messages_extend(last.messages, messages):
            return (
                renderer.encode(renderer.render(messages, tools, generation=True)),
                fresh_trajectory,
                messages,
            )
        # The stored spelling of the shared history, the client's only for what is new.
        history = last.messages + messages[len(last.messages) :]
        before = renderer.render(last.messages[:-1], tools, generation=True)
        closed = renderer.render(last.messages, tools, generation=False)
        full = renderer.render(history, tools, generation=True)
        if not (closed.startswith(before) and full.startswith(closed)):
            # Not append-only (e.g. a template that drops past reasoning): no shared token prefix.
            return renderer.encode(full), fresh_trajectory, history
        tail = _closing_text(renderer, closed[len(before) :], renderer.decode(last.output_ids))
        new_ids = renderer.encode(tail + full[len(closed) :])
        return last.prompt_ids + last.output_ids + new_ids, last.trajectory, history


def _closing_text(renderer: ChatRenderer, rendered_turn: str, generated: str) -> str:
    """The template text that ends the assistant turn after what the model generated.

    The template renders the turn as ``<content><|im_end|>\\n``; a model that stopped on EOS already
    produced ``<|im_end|>``, so only ``\\n`` is left; one cut by ``max_tokens`` needs all of it.
    When the rendering differs from the generated text (a re-serialised tool call), the turn's end
    is found from the template's EOS marker.
    """
    if rendered_turn.startswith(generated):
        return rendered_turn[len(generated) :]
    eos = renderer.eos_text
    if eos is None or eos not in rendered_turn:
        return ""
    at = rendered_turn.rfind(eos)
    return rendered_turn[at + len(eos) :] if generated.endswith(eos) else rendered_turn[at:]


class SessionStore:
    """Sessions by id, for one endpoint."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def create(self) -> Session:
        session = Session(id=uuid.uuid4().hex)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise UnknownSessionError(session_id)
        return session

    def close(self, session_id: str) -> Session:
        """Remove the session and return it; later requests on it get 404."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise UnknownSessionError(session_id)
        session.closed = True
        return session

    def __len__(self) -> int:
        return len(self._sessions)
