"""An OpenAI-compatible chat endpoint over an inference engine, recording every turn per session.

Routes (aiohttp, on loopback):

- ``POST /sessions`` -> ``{"session_id"}``; ``DELETE /sessions/{id}``.
- ``POST /sessions/{id}/v1/chat/completions``: a recorded turn. The agent's ``base_url`` is
  ``http://127.0.0.1:PORT/sessions/{id}``, so an ``openai`` client uses ``base_url + "/v1"``.
- ``POST /v1/chat/completions``: the same, unrecorded (eval, smoke tests).
- ``GET /v1/models`` and ``GET /sessions/{id}/v1/models``.

Non-streaming and streaming (server-sent events: token by token on an engine that reports tokens
as they come, ``EmbeddedEngine.generate_stream``; from the finished turn otherwise and for
``n > 1``), ``n``, ``logprobs``, ``tools`` / ``tool_choice`` with
``<tool_call>`` parsing (:mod:`miles_sdk.agents.tool_calls`). Beyond the OpenAI fields, the reply
carries ``prompt_token_ids`` and, per choice, ``token_ids`` and ``weight_version``: the ids the
engine saw and produced, which are exactly what the session records.

A turn whose client went away before its reply was written (disconnect, cancelled request) is not
recorded: the agent never saw it, so it is not part of the trajectory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
from aiohttp import web

from miles_sdk.agents.requests import ChatRequest, ChatRequestError, parse_chat_request
from miles_sdk.agents.session import ChatRenderer, Session, SessionStore, TurnRecord, UnknownSessionError
from miles_sdk.agents.tool_calls import parse_tool_calls
from miles_sdk.engines.base import EngineOutput, InferenceEngine, SamplingParams
from miles_sdk.engines.http_server import ServerHandle, read_json_object, serve_app
from miles_sdk.rollout.context import TokenizerLike
from miles_sdk.types import ChatMessage

__all__ = ["AgentEndpoint"]

logger = logging.getLogger(__name__)


def _error(status: int, message: str, code: str = "invalid_request") -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


@attrs.frozen
class _Choice:
    output: EngineOutput
    message: ChatMessage
    finish_reason: str


class AgentEndpoint:
    """The chat endpoint over ``engine``; :meth:`start` serves it, :attr:`sessions` holds the records.

    ``max_seq_len`` bounds prompt + completion of every turn (a longer prompt is refused with
    ``context_length_exceeded``; ``max_tokens`` is capped to fit). ``default_max_tokens`` applies
    when a request sets none.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        tokenizer: TokenizerLike,
        *,
        model_name: str = "policy",
        max_seq_len: int | None = None,
        default_max_tokens: int = 1024,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.renderer = ChatRenderer(tokenizer, chat_template_kwargs)
        self.model_name = model_name
        self.max_seq_len = max_seq_len
        self.default_max_tokens = default_max_tokens
        self.sessions = SessionStore()
        self.handle: ServerHandle | None = None

    # -- serving -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
        """Serve in the running event loop (port 0: a free one)."""
        if self.handle is None:
            self.handle = await serve_app(self.app(), host, port)
        return self.handle

    async def close(self) -> None:
        if self.handle is not None:
            await self.handle.close()
            self.handle = None

    @property
    def url(self) -> str:
        if self.handle is None:
            raise RuntimeError("AgentEndpoint is not started: await endpoint.start() first")
        return self.handle.url

    def session_url(self, session: Session) -> str:
        """The ``base_url`` an agent gets for ``session`` (Miles's: the OpenAI API is under ``/v1``)."""
        return f"{self.url}/sessions/{session.id}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/sessions", self._create)
        app.router.add_delete("/sessions/{sid}", self._delete)
        app.router.add_post("/sessions/{sid}/v1/chat/completions", self._chat)
        app.router.add_get("/sessions/{sid}/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    # -- handlers ----------------------------------------------------------------------------

    async def _create(self, _: web.Request) -> web.Response:
        return web.json_response({"session_id": self.sessions.create().id})

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            self.sessions.close(request.match_info["sid"])
        except UnknownSessionError as e:
            return _error(404, f"no session {e.args[0]!r}", "session_not_found")
        return web.json_response({"deleted": True})

    async def _models(self, _: web.Request) -> web.Response:
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "miles_sdk"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        session: Session | None = None
        try:
            if "sid" in request.match_info:
                session = self.sessions.get(request.match_info["sid"])
            chat = parse_chat_request(body, default_model=self.model_name)
            if session is None:
                prompt = self.renderer.encode(
                    self.renderer.render(chat.messages, chat.tools, generation=True)
                )
                reply, _ = await self._turn(request, chat, prompt)
                return reply
            async with session.lock:  # one turn at a time per session: turns extend each other
                prompt, trajectory, history = session.prompt_ids(self.renderer, chat.messages, chat.tools)
                reply, choices = await self._turn(request, chat, prompt)
                if _client_gone(request) or session.closed:
                    session.discarded += 1
                    logger.info("session %s: a turn finished after its client left; not recorded", session.id)
                else:
                    self._record(session, chat, prompt, trajectory, history, choices)
                return reply
        except UnknownSessionError as e:
            return _error(
                404, f"no session {e.args[0]!r} (already collected, or never created)", "session_not_found"
            )
        except ChatRequestError as e:
            if session is not None and e.code == "context_length_exceeded":
                session.context_exceeded = True
            return _error(e.status, str(e), e.code)
        except (ConnectionResetError, asyncio.CancelledError):
            if session is not None:
                session.discarded += 1
            raise

    # -- generation --------------------------------------------------------------------------

    async def _turn(
        self, request: web.Request, chat: ChatRequest, prompt: list[int]
    ) -> tuple[web.StreamResponse, list[_Choice]]:
        """Generate and reply: streamed token by token when the engine can report tokens as they
        come (``generate_stream``) and one choice is asked for, else from the finished turn."""
        stream = getattr(self.engine, "generate_stream", None)
        if chat.stream and chat.n == 1 and callable(stream):
            (params,) = self._sampling_params(chat, prompt)
            return await self._stream(request, chat, prompt, stream(prompt, params))
        choices = await self._generate(chat, prompt)
        return await self._reply(request, chat, prompt, choices), choices

    async def _generate(self, chat: ChatRequest, prompt: list[int]) -> list[_Choice]:
        requests = [self.engine.generate(prompt, p) for p in self._sampling_params(chat, prompt)]
        outputs = await asyncio.gather(*requests)
        return [self._choice(chat, out) for out in outputs]

    def _sampling_params(self, chat: ChatRequest, prompt: list[int]) -> list[SamplingParams]:
        """One engine request per choice; raises ``context_length_exceeded`` when no room is left."""
        budget = chat.max_tokens or self.default_max_tokens
        if self.max_seq_len is not None:
            room = self.max_seq_len - len(prompt)
            if room <= 0:
                raise ChatRequestError(
                    f"the prompt has {len(prompt)} tokens, max_seq_len is {self.max_seq_len}: "
                    "shorten the conversation",
                    code="context_length_exceeded",
                )
            budget = min(budget, room)
        requests = []
        for i in range(chat.n):
            params = SamplingParams(**chat.params)
            params["max_new_tokens"] = budget
            if "sampling_seed" in params:
                params["sampling_seed"] = params["sampling_seed"] + i
            requests.append(params)
        return requests

    def _choice(self, chat: ChatRequest, out: EngineOutput) -> _Choice:
        text = self.renderer.decode(out.token_ids)
        eos = self.renderer.eos_text
        if eos is not None and text.endswith(eos):
            text = text[: -len(eos)]
        for stop in chat.params.get("stop", []):
            if text.endswith(stop):  # OpenAI trims the stop string (the recorded ids keep it)
                text = text[: -len(stop)]
                break
        finish = out.finish_reason.value
        message: ChatMessage = {"role": "assistant", "content": text}
        if chat.parse_tools:
            parsed = parse_tool_calls(text, chat.tool_names)
            if parsed.error is not None:
                logger.info("tool call returned as text: %s", parsed.error)
            if parsed.tool_calls:
                message = {"role": "assistant", "content": parsed.content, "tool_calls": parsed.tool_calls}
                if finish == "stop":
                    finish = "tool_calls"
        return _Choice(out, message, finish)

    def _record(
        self,
        session: Session,
        chat: ChatRequest,
        prompt: list[int],
        trajectory: int,
        history: list[ChatMessage],
        choices: list[_Choice],
    ) -> None:
        """Choice 0 extends the session's history; further choices (``n > 1``) are kept as
        trajectories of their own (an agent that continues from one of them starts afresh)."""

        def record(choice: _Choice, index: int) -> TurnRecord:
            stored = {k: v for k, v in choice.message.items() if v is not None}
            stored.setdefault("content", "")
            return TurnRecord(
                prompt_ids=list(prompt),
                output_ids=list(choice.output.token_ids),
                log_probs=[float(x) for x in choice.output.log_probs],
                weight_version=choice.output.weight_version,
                finish_reason=choice.output.finish_reason.value,
                trajectory=index,
                messages=[*history, stored],
            )

        if trajectory == session.trajectories:
            session.trajectories += 1
        for choice in choices[1:]:
            session.records.append(record(choice, session.trajectories))
            session.trajectories += 1
        session.records.append(record(choices[0], trajectory))  # last: the next turn extends it
        session.tools = chat.tools

    # -- replies -----------------------------------------------------------------------------

    def _completion(self, chat: ChatRequest, prompt: list[int], choices: list[_Choice]) -> dict[str, Any]:
        out_choices = []
        for i, c in enumerate(choices):
            entry: dict[str, Any] = {
                "index": i,
                "message": c.message,
                "finish_reason": c.finish_reason,
                "logprobs": self._logprobs(c.output) if chat.logprobs else None,
                "token_ids": list(c.output.token_ids),
                "weight_version": c.output.weight_version,
            }
            out_choices.append(entry)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": out_choices,
            "usage": self._usage(prompt, choices),
            "prompt_token_ids": list(prompt),
        }

    def _usage(self, prompt: list[int], choices: list[_Choice]) -> dict[str, int]:
        completion = sum(len(c.output.token_ids) for c in choices)
        return {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion,
            "total_tokens": len(prompt) + completion,
        }

    def _logprobs(self, out: EngineOutput) -> dict[str, Any]:
        content = []
        for token, lp in zip(out.token_ids, out.log_probs, strict=True):
            text = self.renderer.decode([token])
            content.append(
                {"token": text, "logprob": float(lp), "bytes": list(text.encode()), "top_logprobs": []}
            )
        return {"content": content}

    async def _reply(
        self, request: web.Request, chat: ChatRequest, prompt: list[int], choices: list[_Choice]
    ) -> web.StreamResponse:
        completion = self._completion(chat, prompt, choices)
        if not chat.stream:
            return web.json_response(completion)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in _stream_events(completion, include_usage=chat.include_usage):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        chat: ChatRequest,
        prompt: list[int],
        tokens: AsyncIterator[list[int] | EngineOutput],
    ) -> tuple[web.StreamResponse, list[_Choice]]:
        """Send the turn's content as the engine produces it (``chat.completion.chunk`` events).

        Only text that the finished turn's ``content`` is sure to start with is sent early
        (:meth:`_sendable`); tool calls, the rest of the content, the finish reason, ``token_ids``
        and the log-probs go out once the turn is done, as the non-incremental path sends them.
        """
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": chat.model,
            "object": "chat.completion.chunk",
        }

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            entry = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} | extra
            await response.write(f"data: {json.dumps(head | {'choices': [entry]})}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        ids: list[int] = []
        sent = ""
        out: EngineOutput | None = None
        try:
            async for item in tokens:
                if isinstance(item, EngineOutput):
                    out = item
                    break
                ids += item
                ready = self._sendable(chat, self.renderer.decode(ids))
                if len(ready) > len(sent):
                    await send({"content": ready[len(sent) :]})
                    sent = ready
        finally:
            aclose = getattr(tokens, "aclose", None)
            if aclose is not None:
                await aclose()  # a client that left cancels the engine request
        if out is None:
            raise RuntimeError("the engine's token stream ended without its output")
        choice = self._choice(chat, out)
        content = choice.message.get("content") or ""
        if not content.startswith(sent):  # not expected (see _sendable); the client has what it has
            logger.warning("streamed content %r is not a prefix of the turn's content %r", sent, content)
        elif len(content) > len(sent):
            await send({"content": content[len(sent) :]})
        for j, call in enumerate(choice.message.get("tool_calls") or []):
            await send({"tool_calls": [{"index": j, **call}]})
        await send(
            {},
            choice.finish_reason,
            logprobs=self._logprobs(out) if chat.logprobs else None,
            token_ids=list(out.token_ids),
            weight_version=out.weight_version,
        )
        if chat.include_usage:
            usage = {"choices": [], "usage": self._usage(prompt, [choice]), "prompt_token_ids": list(prompt)}
            await response.write(f"data: {json.dumps(head | usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response, [choice]

    def _sendable(self, chat: ChatRequest, text: str) -> str:
        """The longest start of ``text`` (the turn so far) that the finished turn's content will
        start with, whatever comes next: not a character still being decoded, not the start of
        the EOS marker or a stop string (trimmed from the end), and with tools, nothing from a
        ``<tool_call>`` on (parsed at the end), no trailing whitespace (stripped when a call
        follows) and nothing while the text starts with whitespace (stripped then too)."""
        text = text.rstrip("\ufffd")  # bytes of a character the next token completes
        ends = [e for e in (self.renderer.eos_text, *chat.params.get("stop", [])) if e]
        for end in ends:
            for k in range(min(len(end), len(text)), 0, -1):
                if text.endswith(end[:k]):
                    text = text[:-k]
                    break
        if not chat.parse_tools:
            return text
        if text[:1].isspace():
            return ""
        at = text.find(_TOOL_CALL)
        if at >= 0:
            text = text[:at]
        for k in range(min(len(_TOOL_CALL) - 1, len(text)), 0, -1):
            if text.endswith(_TOOL_CALL[:k]):
                text = text[:-k]
                break
        return text.rstrip()


_TOOL_CALL = "<tool_call>"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _stream_events(completion: Mapping[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
    """A finished completion as ``chat.completion.chunk`` events: role, content, tool calls, finish."""
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    events: list[dict[str, Any]] = []
    for choice in completion["choices"]:
        i, message = choice["index"], choice["message"]

        def chunk(
            delta: dict[str, Any], finish: str | None = None, *, i: int = i, **extra: Any
        ) -> dict[str, Any]:
            entry = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None} | extra
            return head | {"choices": [entry]}

        events.append(chunk({"role": "assistant", "content": ""}))
        if message.get("content"):
            events.append(chunk({"content": message["content"]}, logprobs=choice["logprobs"]))
        for j, call in enumerate(message.get("tool_calls") or []):
            events.append(chunk({"tool_calls": [{"index": j, **call}]}))
        events.append(
            chunk(
                {},
                choice["finish_reason"],
                token_ids=choice["token_ids"],
                weight_version=choice["weight_version"],
            )
        )
    if include_usage:
        events.append(
            head
            | {
                "choices": [],
                "usage": completion["usage"],
                "prompt_token_ids": completion["prompt_token_ids"],
            }
        )
    return events
