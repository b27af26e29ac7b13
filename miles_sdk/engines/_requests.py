"""One generate request on the host side: its parsed sampling params, its tokens so far, and the
stop checks run after every sampled token; and :class:`Batch`, the requests of one submission,
answered together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import attrs
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from miles_sdk.engines._sampling import RowParams
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams

__all__ = [
    "Batch",
    "OnDone",
    "ParsedParams",
    "Request",
    "check_prompt",
    "decode_texts",
    "new_request",
    "parse_params",
    "parse_sampling_params",
]

_SEED_MASK = (1 << 63) - 1

OnDone = Callable[[int, EngineOutput], None]
"""Called with (index in the batch, output) as each request of a batch finishes; must not raise."""


class Batch:
    """The requests of one submission (``generate``: one, ``generate_batch``: several): each
    output lands at its request's index, and one future resolves, with all of them in order, once
    the last is in. One wake-up for the caller however many requests it sent."""

    __slots__ = ("future", "left", "on_done", "outputs")

    def __init__(
        self, future: asyncio.Future[list[EngineOutput]], size: int, on_done: OnDone | None = None
    ) -> None:
        self.future = future
        self.outputs: list[EngineOutput | None] = [None] * size
        self.left = size
        self.on_done = on_done

    def put(self, index: int, output: EngineOutput) -> None:
        """Record the output of request ``index`` (once per request)."""
        self.outputs[index] = output
        self.left -= 1
        if self.on_done is not None:
            self.on_done(index, output)
        if self.left == 0 and not self.future.done():
            self.future.set_result([out for out in self.outputs if out is not None])

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@attrs.define(eq=False)
class Request:
    """A request queued in or running on the embedded engine."""

    prompt: list[int]
    row: RowParams
    max_new_tokens: int
    stop_strings: tuple[str, ...]
    stop_ids: frozenset[int]
    """Token ids that end generation (EOS + ``stop_token_ids``; empty under ``ignore_eos``)."""
    max_context: int
    skip_special_tokens: bool
    batch: Batch
    """Where its output goes."""
    index: int = 0
    """Its place in ``batch``."""
    tokens: list[int] = attrs.field(factory=list)
    log_probs: list[float] = attrs.field(factory=list)
    cancelled: bool = False
    """Its caller stopped waiting (cancelled): the scheduler drops it."""
    done: bool = False
    """Its output is out (finished, aborted or failed)."""
    progress: asyncio.Event | None = None
    """Set by the engine whenever tokens were appended (``EmbeddedEngine.generate_stream``)."""

    def finish(self, output: EngineOutput) -> None:
        """Hand ``output`` to the batch; later calls are ignored (the first answer stands)."""
        if not self.done:
            self.done = True
            self.batch.put(self.index, output)

    @property
    def stop_window(self) -> int:
        """Tokens to decode to see any stop string whole: a byte-level token can be a quarter of
        a character, plus one token of slack for a string that starts mid-token."""
        return 4 * max((len(s) for s in self.stop_strings), default=0) + 2

    def accept(self, token: int, log_prob: float, tokenizer: PreTrainedTokenizerBase) -> FinishReason | None:
        """Append one sampled token; return why the request ends now, or None to go on.

        The order follows SGLang: the token budget first, then stop ids, then stop strings.
        """
        self.tokens.append(token)
        self.log_probs.append(log_prob)
        if len(self.tokens) >= self.max_new_tokens or len(self.prompt) + len(self.tokens) >= self.max_context:
            return FinishReason.LENGTH
        if token in self.stop_ids:
            return FinishReason.STOP
        if self.stop_strings:
            tail = str(tokenizer.decode(self.tokens[-self.stop_window :], skip_special_tokens=False))
            if any(s in tail for s in self.stop_strings):
                return FinishReason.STOP
        return None

    def accept_many(
        self, tokens: list[int], log_probs: list[float], tokenizer: PreTrainedTokenizerBase
    ) -> FinishReason | None:
        """:meth:`accept` for a chunk of tokens; the excess after a finish is dropped.

        Without stop strings this works on whole lists (a decode chunk is 16 tokens x every
        running request, so per-token Python would cost as much as the GPU step).
        """
        if self.stop_strings:
            for tok, lp in zip(tokens, log_probs, strict=True):
                reason = self.accept(tok, lp, tokenizer)
                if reason is not None:
                    return reason
            return None
        done = len(self.tokens)
        limit = min(self.max_new_tokens - done, self.max_context - len(self.prompt) - done)
        stop_ids = self.stop_ids
        if len(tokens) == 1 and limit >= 1:  # a decode step of one token: no slicing
            token = tokens[0]
            self.tokens.append(token)
            self.log_probs.append(log_probs[0])
            if limit == 1:  # the budget is checked before stop ids, as in accept()
                return FinishReason.LENGTH
            return FinishReason.STOP if token in stop_ids else None
        # Most chunks hold no stop id: one set scan in C, no Python loop over the tokens.
        if stop_ids and not stop_ids.isdisjoint(tokens):
            cut = next((i for i, t in enumerate(tokens[:limit]) if t in stop_ids), None)
            if cut is not None and cut < limit - 1:
                self.tokens += tokens[: cut + 1]
                self.log_probs += log_probs[: cut + 1]
                return FinishReason.STOP
        if len(tokens) >= limit:  # the budget is checked before stop ids, as in accept()
            self.tokens += tokens[:limit]
            self.log_probs += log_probs[:limit]
            return FinishReason.LENGTH
        self.tokens += tokens
        self.log_probs += log_probs
        return None


def _number(params: Mapping[str, object], key: str, default: float) -> float:
    value = params.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"sampling_params[{key!r}] must be a number, got {value!r}")
    return float(value)


@attrs.frozen
class ParsedParams:
    """A request's sampling params, validated: everything but its prompt and default seed."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    """``sampling_seed``, or None for the engine's next default seed."""
    max_new_tokens: int
    stop_strings: tuple[str, ...]
    stop_ids: frozenset[int]
    skip_special_tokens: bool


def check_prompt(input_ids: Sequence[int], *, vocab_size: int, max_context: int) -> list[int]:
    """The prompt as a list of ints, checked against the vocabulary and the context."""
    # Builtins over the whole prompt: a GRPO batch parses 128 x (prompt) ids before its prefill.
    prompt = list(map(int, input_ids))
    if not prompt:
        raise ValueError("generate: input_ids is empty; the engine needs at least one prompt token")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        raise ValueError(f"generate: input_ids holds ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    if len(prompt) >= max_context:
        raise ValueError(
            f"generate: prompt of {len(prompt)} tokens leaves no room in the context of {max_context}"
        )
    return prompt


def parse_params(
    sampling_params: SamplingParams, *, eos_ids: frozenset[int], default_max_new_tokens: int
) -> ParsedParams:
    """Validate one request's sampling params. Errors name the offending key.

    Keys outside :class:`SamplingParams` are ignored, as SGLang passes many the engine needn't.
    """
    p: Mapping[str, object] = sampling_params
    temperature = _number(p, "temperature", 1.0)
    top_p = _number(p, "top_p", 1.0)
    top_k = int(_number(p, "top_k", -1))
    max_new = int(_number(p, "max_new_tokens", default_max_new_tokens))
    seed = int(_number(p, "sampling_seed", 0)) if p.get("sampling_seed") is not None else None
    if temperature < 0:
        raise ValueError(f"sampling_params['temperature'] must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling_params['top_p'] must be in (0, 1], got {top_p}")
    if max_new < 0:
        raise ValueError(f"sampling_params['max_new_tokens'] must be >= 0, got {max_new}")
    stop = p.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise TypeError(f"sampling_params['stop'] must be a list of non-empty strings, got {stop!r}")
    extra_ids = p.get("stop_token_ids") or []
    if not isinstance(extra_ids, list | tuple) or not all(isinstance(t, int) for t in extra_ids):
        raise TypeError(f"sampling_params['stop_token_ids'] must be a list of ints, got {extra_ids!r}")
    # SGLang: ignore_eos turns off every token-id stop (EOS and stop_token_ids); strings still stop.
    stop_ids = frozenset() if p.get("ignore_eos", False) else eos_ids | frozenset(int(t) for t in extra_ids)
    return ParsedParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        max_new_tokens=max_new,
        stop_strings=tuple(str(s) for s in stop),
        stop_ids=stop_ids,
        skip_special_tokens=bool(p.get("skip_special_tokens", True)),
    )


def new_request(
    prompt: list[int], params: ParsedParams, *, default_seed: int, max_context: int, batch: Batch, index: int
) -> Request:
    """The :class:`Request` for a checked prompt and parsed params (``params.seed``, else ``default_seed``)."""
    seed = default_seed if params.seed is None else params.seed
    return Request(
        prompt=prompt,
        row=RowParams(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, seed=seed & _SEED_MASK
        ),
        max_new_tokens=params.max_new_tokens,
        stop_strings=params.stop_strings,
        stop_ids=params.stop_ids,
        max_context=max_context,
        skip_special_tokens=params.skip_special_tokens,
        batch=batch,
        index=index,
    )


def parse_sampling_params(
    input_ids: Sequence[int],
    sampling_params: SamplingParams,
    *,
    vocab_size: int,
    eos_ids: frozenset[int],
    default_seed: int,
    default_max_new_tokens: int,
    max_context: int,
    batch: Batch,
    index: int = 0,
) -> Request:
    """Validate one request and build its :class:`Request` (:func:`check_prompt`, then
    :func:`parse_params`). Errors name the offending key."""
    prompt = check_prompt(input_ids, vocab_size=vocab_size, max_context=max_context)
    params = parse_params(sampling_params, eos_ids=eos_ids, default_max_new_tokens=default_max_new_tokens)
    return new_request(
        prompt, params, default_seed=default_seed, max_context=max_context, batch=batch, index=index
    )


def decode_texts(
    tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]], skip_special_tokens: bool
) -> list[str]:
    """``tokenizer.decode(seq, skip_special_tokens=...)`` for each sequence, identical text.

    A plain fast tokenizer without space clean-up decodes in one call into its Rust backend:
    ``decode`` first walks every id in Python (``to_py_obj``), which was about half the time of
    decoding W1's 128 x 256 tokens, all of it after the last decode step.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain = (
        backend is not None
        and type(tokenizer).decode is _FAST_DECODE
        and getattr(type(tokenizer), "_decode", None) is _FAST_PRIVATE_DECODE
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
    )
    if plain and backend is not None:
        return list(backend.decode_batch(sequences, skip_special_tokens=skip_special_tokens))
    return [str(tokenizer.decode(seq, skip_special_tokens=skip_special_tokens)) for seq in sequences]


_FAST_DECODE = PreTrainedTokenizerFast.decode
_FAST_PRIVATE_DECODE = getattr(PreTrainedTokenizerFast, "_decode", None)
