"""`ScriptedEngine`: an InferenceEngine that answers from a script, for unit-testing rollout hooks.

.. code-block:: python

    engine = ScriptedEngine({"1+1=": "2"}, tokenizer=tok, delays=0.01)
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        sample = await my_generate(args, sample, params)
    assert engine.requests[0].sampling_params["max_new_tokens"] == 16

It honours ``max_new_tokens`` (finish ``length``), ``stop_token_ids`` and, with a tokenizer,
``stop`` strings (finish ``stop``, the stop text kept). Tokens come out one at a time, ``delays``
seconds apart, so :meth:`abort_all` cuts a slow request short: it returns ``abort`` with the tokens
it had, exactly what a partial rollout resumes from. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias, TypeVar, cast

import attrs

from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.rollout.context import TokenizerLike, decode_text

__all__ = ["PromptView", "Script", "ScriptedEngine", "ScriptedRequest", "ScriptedResponse"]

PromptView: TypeAlias = str | list[int]
"""The prompt as a script sees it: decoded text with a tokenizer, else the token ids."""
ScriptedResponse: TypeAlias = str | Sequence[int]
"""A response: text (needs a tokenizer) or token ids."""

T = TypeVar("T")


@attrs.define
class ScriptedRequest:
    """One generate request as the engine saw it, and what it answered."""

    index: int
    """Arrival order, from 0."""
    input_ids: list[int]
    text: str | None
    """``input_ids`` decoded (None without a tokenizer)."""
    sampling_params: SamplingParams
    """A copy of what the caller sent (max_new_tokens after budgeting, seeds, stops...)."""
    time: float
    """``time.monotonic()`` at arrival."""
    weight_version: int
    """The engine's weight version when the request arrived."""
    output: EngineOutput | None = None
    """The answer, once the request finished."""

    @property
    def prompt(self) -> PromptView:
        """What a script callable receives: the text when known, else the ids."""
        return self.text if self.text is not None else list(self.input_ids)


Script: TypeAlias = (
    ScriptedResponse
    | Mapping[str, ScriptedResponse]
    | Sequence[ScriptedResponse]
    | Callable[[PromptView], ScriptedResponse]
    | Callable[[PromptView, ScriptedRequest], ScriptedResponse]
)
PerRequest: TypeAlias = T | Callable[[ScriptedRequest], T]


class ScriptedEngine:
    """An :class:`~miles_sdk.engines.base.InferenceEngine` whose answers come from ``responses``.

    ``responses`` may be:

    - one response for every request (a str, or a list of token ids);
    - a mapping prompt text -> response: the exact prompt text, else the key found latest in the
      prompt (so a growing multi-turn prompt matches its newest turn);
    - a list of responses, answered in request order (an error once used up) — pass a tuple
      to tell it apart from a list of token ids;
    - a callable ``(prompt) -> response`` or ``(prompt, request) -> response``.

    Per-request settings take a value or a callable ``(request) -> value``:
    ``log_probs`` (a float for every token, or a per-token list), ``finish_reasons`` (the reason
    when the whole response was emitted; default ``stop``), ``delays`` (seconds before each token)
    and ``abort_after`` (the request aborts after this many tokens, like a server-side abort).
    """

    def __init__(
        self,
        responses: Script,
        *,
        tokenizer: TokenizerLike | None = None,
        log_probs: PerRequest[float | Sequence[float]] = -0.5,
        finish_reasons: PerRequest[FinishReason | str] = FinishReason.STOP,
        delays: PerRequest[float] = 0.0,
        abort_after: PerRequest[int | None] = None,
        weight_version: int = 0,
    ) -> None:
        if isinstance(responses, Mapping) and tokenizer is None:
            raise TypeError("ScriptedEngine: a mapping script matches prompt text, so it needs tokenizer=")
        self._script = responses
        self._tokenizer = tokenizer
        self._log_probs = log_probs
        self._finish_reasons = finish_reasons
        self._delays = delays
        self._abort_after = abort_after
        self._weight_version = weight_version
        self._next_in_sequence = 0
        self._abort_event = asyncio.Event()
        self.requests: list[ScriptedRequest] = []
        """Every request, in arrival order."""
        self.in_flight = 0
        """Requests that arrived and have not returned."""
        self.max_in_flight = 0
        """The most requests in flight at once (checks a concurrency limit)."""
        self.abort_calls = 0

    # -- InferenceEngine ---------------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._weight_version

    def update_weights(self, version: int | None = None) -> None:
        self._weight_version = self._weight_version + 1 if version is None else version

    async def abort_all(self) -> None:
        """Requests in flight now return ``abort`` at their next token; later ones run normally."""
        self.abort_calls += 1
        self._abort_event.set()
        self._abort_event = asyncio.Event()

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        ids = [int(t) for t in input_ids]
        text = decode_text(self._tokenizer, ids) if self._tokenizer is not None else None
        req = ScriptedRequest(
            index=len(self.requests),
            input_ids=ids,
            text=text,
            sampling_params=SamplingParams(**sampling_params),
            time=time.monotonic(),
            weight_version=self._weight_version,
        )
        self.requests.append(req)
        abort_event = self._abort_event
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            req.output = await self._run(req, abort_event)
        finally:
            self.in_flight -= 1
        return req.output

    # -- internals ---------------------------------------------------------------------------------

    async def _run(self, req: ScriptedRequest, abort_event: asyncio.Event) -> EngineOutput:
        planned = self._encode(self._respond(req), req)
        params = req.sampling_params
        budget = params.get("max_new_tokens")
        stop_ids = set(params.get("stop_token_ids", []))
        stops = params.get("stop", []) if self._tokenizer is not None else []
        abort_at = _resolve(self._abort_after, req)
        delay = float(_resolve(self._delays, req))

        out: list[int] = []
        finish: FinishReason | None = None
        for token in planned:
            if abort_at is not None and len(out) >= abort_at:
                finish = FinishReason.ABORT
                break
            if budget is not None and len(out) >= budget:
                finish = FinishReason.LENGTH
                break
            if await _aborted_during(abort_event, delay):
                finish = FinishReason.ABORT
                break
            out.append(token)
            if token in stop_ids or (stops and any(s in self._decode(out) for s in stops)):
                finish = FinishReason.STOP
                break
        if finish is None:
            finish = FinishReason(_resolve(self._finish_reasons, req))

        lp = self._log_probs(req) if callable(self._log_probs) else self._log_probs
        if isinstance(lp, (int, float)):
            log_probs = [float(lp)] * len(out)
        else:
            if len(lp) < len(out):
                raise ValueError(
                    f"ScriptedEngine: request {req.index} emitted {len(out)} tokens but log_probs has {len(lp)}"
                )
            log_probs = [float(x) for x in lp[: len(out)]]
        text = self._decode(out) if self._tokenizer is not None else None
        return EngineOutput(
            token_ids=out,
            log_probs=log_probs,
            finish_reason=finish,
            weight_version=req.weight_version,
            text=text,
        )

    def _respond(self, req: ScriptedRequest) -> ScriptedResponse:
        script = self._script
        if isinstance(script, str):
            return script
        if isinstance(script, Mapping):
            return _match(script, req)
        if isinstance(script, tuple) or (
            isinstance(script, list) and script and not all(isinstance(t, int) for t in script)
        ):
            if self._next_in_sequence >= len(script):
                raise IndexError(
                    f"ScriptedEngine: request {req.index} arrived but the script's {len(script)} responses are used up"
                )
            answer = cast(ScriptedResponse, script[self._next_in_sequence])
            self._next_in_sequence += 1
            return answer
        if isinstance(script, Sequence):
            return cast(Sequence[int], script)
        if _positional_arity(script) >= 2:
            return cast(Callable[[PromptView, ScriptedRequest], ScriptedResponse], script)(req.prompt, req)
        return cast(Callable[[PromptView], ScriptedResponse], script)(req.prompt)

    def _encode(self, response: ScriptedResponse, req: ScriptedRequest) -> list[int]:
        if isinstance(response, str):
            if self._tokenizer is None:
                raise TypeError(
                    f"ScriptedEngine: request {req.index} got text response {response[:40]!r} but no tokenizer= "
                    "was given; script token ids or pass a tokenizer"
                )
            return list(self._tokenizer.encode(response, add_special_tokens=False))
        return [int(t) for t in response]

    def _decode(self, ids: list[int]) -> str:
        assert self._tokenizer is not None
        return decode_text(self._tokenizer, ids)


def _resolve(value: PerRequest[T], req: ScriptedRequest) -> T:
    if callable(value):
        return value(req)
    return value


def _match(script: Mapping[str, ScriptedResponse], req: ScriptedRequest) -> ScriptedResponse:
    text = req.text or ""
    if text in script:
        return script[text]
    best: tuple[int, int, str] | None = None
    for key in script:
        pos = text.rfind(key)
        if key and pos >= 0 and (best is None or (pos + len(key), len(key)) > best[:2]):
            best = (pos + len(key), len(key), key)
    if best is None:
        raise KeyError(
            f"ScriptedEngine: no script key matches request {req.index} prompt {text[-80:]!r}; "
            f"keys: {sorted(script)[:10]}"
        )
    return script[best[2]]


def _positional_arity(fn: Callable[..., object]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


async def _aborted_during(event: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds; True as soon as ``event`` fires (abort_all was called)."""
    if event.is_set():
        return True
    if delay <= 0:
        return False
    try:
        await asyncio.wait_for(event.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True
