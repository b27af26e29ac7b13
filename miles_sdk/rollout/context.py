"""The rollout's view of the run: engine, tokenizer and the user hooks, installed by the Trainer.

Miles's rollout functions reach their engine and hooks through global singletons and
``--*-path`` strings. Here the Trainer builds one :class:`RolloutContext` and installs it with
:func:`use_rollout_context` around each rollout call, so a user's own ``RolloutFn`` or
``GenerateFn`` keeps Miles's signature ``(args, ...)`` and still reaches the engine through
:func:`get_rollout_context`. A contextvar (not a global) keeps concurrent trainers and tests apart.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

from miles_sdk.engines.base import InferenceEngine
from miles_sdk.hooks import (
    BatchedRewardFn,
    DynamicSamplingFilterFn,
    GenerateFn,
    RewardFn,
    RolloutAllSamplesProcessFn,
    RolloutSampleFilterFn,
)
from miles_sdk.types import Sample

__all__ = [
    "EvalDatasetLike",
    "GenerateFnLoader",
    "RolloutContext",
    "RolloutContextError",
    "TokenizerLike",
    "decode_text",
    "get_rollout_context",
    "use_rollout_context",
]


class RolloutContextError(RuntimeError):
    """The rollout ran without a :class:`RolloutContext` installed."""


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer the rollout uses (any ``PreTrainedTokenizerBase`` fits)."""

    def encode(self, text: str, /, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool = ...) -> str | list[str]: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        /,
        *,
        tokenize: bool = ...,
        add_generation_prompt: bool = ...,
    ) -> object: ...


def decode_text(tokenizer: TokenizerLike, token_ids: Sequence[int]) -> str:
    """``tokenizer.decode`` of one sequence, special tokens kept (HF's return type also covers batches)."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=False)
    if not isinstance(text, str):
        raise TypeError(f"{type(tokenizer).__name__}.decode returned {type(text).__name__}, expected str")
    return text


@runtime_checkable
class EvalDatasetLike(Protocol):
    """One eval dataset as the eval rollout reads it (``miles_sdk.data.load_eval_datasets`` builds them).

    ``groups()`` returns fresh samples, one group per prompt, already repeated
    ``n_samples_per_eval_prompt`` times and with the dataset's metadata (``rm_type``, ...)
    injected. Optional per-dataset sampling settings are read as attributes when present and
    not None: ``temperature``, ``top_p``, ``top_k``, ``max_response_len``, ``stop``,
    ``stop_token_ids``, ``reward_key`` and ``custom_generate_function_path``; the ``eval_*`` /
    ``rollout_*`` settings fill the rest.
    """

    @property
    def name(self) -> str: ...

    def groups(self) -> list[list[Sample]]: ...


GenerateFnLoader = Callable[[str], GenerateFn]
"""Turns a ``sample.generate_function_path`` (``pkg.module.attr``) into a checked GenerateFn."""


def _default_generate_fn_loader(path: str) -> GenerateFn:
    # Imported lazily: loading.py imports hooks, and most runs never use per-sample overrides.
    from miles_sdk.loading import load_hook

    fn: GenerateFn = load_hook(path, "GenerateFn", flag="sample.generate_function_path")
    return fn


@attrs.define(kw_only=True)
class RolloutContext:
    """Everything the default rollout needs besides ``args``: built once by the Trainer.

    In a test, build one directly (``RolloutContext(engine=ScriptedEngine(...), tokenizer=tok)``)
    and run the rollout inside ``with use_rollout_context(ctx): ...``.
    """

    engine: InferenceEngine
    """Where generate requests go (embedded, SGLang, HTTP, or a ScriptedEngine in tests)."""
    tokenizer: TokenizerLike | None = None
    """Tokenises prompts whose ``tokens`` are empty and decodes responses; None when every
    sample arrives tokenised and the engine returns text."""
    generate_fn: GenerateFn | None = None
    """``custom_generate_function``; None means single-turn :func:`generate_with_engine`."""
    reward_fn: RewardFn | None = None
    """``custom_rm``; None means the built-in ``rm_type`` graders."""
    batched_reward_fn: BatchedRewardFn | None = None
    """``custom_rm`` in its batched form (``group_rm``)."""
    dynamic_sampling_filter: DynamicSamplingFilterFn | None = None
    rollout_sample_filter: RolloutSampleFilterFn | None = None
    rollout_all_samples_process: RolloutAllSamplesProcessFn | None = None
    eval_datasets: Mapping[str, EvalDatasetLike] = attrs.field(factory=dict)
    """Eval datasets by name, for ``evaluation=True``."""
    load_generate_fn: GenerateFnLoader = _default_generate_fn_loader
    """Loader for per-sample ``generate_function_path`` overrides (results are cached)."""
    _generate_fn_cache: dict[str, GenerateFn] = attrs.field(factory=dict, init=False, repr=False)

    def resolve_generate_fn(self, path: str) -> GenerateFn:
        """The GenerateFn for a per-sample override path, loaded once per context."""
        fn = self._generate_fn_cache.get(path)
        if fn is None:
            fn = self.load_generate_fn(path)
            self._generate_fn_cache[path] = fn
        return fn

    def decode(self, token_ids: Sequence[int]) -> str:
        """Decode ids with the tokenizer; a clear error when there is none."""
        if self.tokenizer is None:
            raise RolloutContextError(
                "RolloutContext.tokenizer is None but the rollout needs to decode tokens "
                "(the engine returned no text); pass tokenizer= to RolloutContext"
            )
        return decode_text(self.tokenizer, token_ids)


_CURRENT: contextvars.ContextVar[RolloutContext | None] = contextvars.ContextVar(
    "miles_sdk_rollout_context", default=None
)


@contextlib.contextmanager
def use_rollout_context(ctx: RolloutContext) -> Iterator[RolloutContext]:
    """Install ``ctx`` for the code (and the asyncio tasks it starts) inside the ``with`` block."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def get_rollout_context() -> RolloutContext:
    """The context installed by the Trainer (or a test) around the current rollout."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RolloutContextError(
            "no RolloutContext is installed: the default rollout and generate_with_engine run inside "
            "Trainer.step()/fit(). To call them directly (e.g. in a test), wrap the call:\n"
            "    from miles_sdk.rollout import RolloutContext, use_rollout_context\n"
            "    from miles_sdk.testing.engine import ScriptedEngine\n"
            "    with use_rollout_context(RolloutContext(engine=ScriptedEngine({...}), tokenizer=tok)):\n"
            "        await generate_rollout(args, 0, data_source)"
        )
    return ctx
