"""Pieces shared by the train and eval rollouts: choosing the generate fn, running it, scoring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.hooks import BatchedRewardFn, GenerateFn
from miles_sdk.rollout.context import RolloutContext
from miles_sdk.rollout.generate import generate_with_engine
from miles_sdk.types import Sample

__all__ = [
    "BatchEngine",
    "gather_or_cancel",
    "hook_name",
    "pick_generate_fn",
    "run_generate_fn",
    "score_unscored",
]

T = TypeVar("T")

_UNSCORABLE = (Sample.Status.ABORTED, Sample.Status.FAILED)


@runtime_checkable
class BatchEngine(Protocol):
    """An engine that also takes several requests in one call (the embedded engine does): the
    default rollout then sends a group of single-turn samples in one call and wakes once for
    their answers, instead of running a task and an engine call per sample."""

    async def generate_batch(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        *,
        on_done: Callable[[int, EngineOutput], None] | None = None,
    ) -> list[EngineOutput]:
        """``generate`` for each pair, in order; ``on_done(i, output)`` as each one finishes."""
        ...


def hook_name(fn: object) -> str:
    """``module.qualname`` of a hook, for error messages."""
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else str(qual)


def pick_generate_fn(ctx: RolloutContext, sample: Sample) -> GenerateFn:
    """The per-sample override, else the custom generate fn, else single-turn generation."""
    if sample.generate_function_path:
        return ctx.resolve_generate_fn(sample.generate_function_path)
    if ctx.generate_fn is not None:
        return ctx.generate_fn
    return generate_with_engine


async def run_generate_fn(
    fn: GenerateFn, args: Config, sample: Sample, sampling_params: SamplingParams
) -> list[Sample]:
    """Call ``fn`` and check its result; a list return (multi-agent) is kept as is.

    An exception propagates with a note naming the generate fn and the sample, so the
    traceback says which hook failed on which prompt.
    """
    try:
        result = await fn(args, sample, sampling_params)
    except Exception as exc:
        exc.add_note(
            f"in generate function {hook_name(fn)} on sample index={sample.index} group={sample.group_index}"
        )
        raise
    if isinstance(result, Sample):
        return [result]
    if isinstance(result, list) and result and all(isinstance(s, Sample) for s in result):
        return list(result)
    raise TypeError(
        f"generate function {hook_name(fn)} returned {type(result).__name__} for sample index={sample.index}; "
        "expected a Sample or a non-empty list[Sample]"
    )


async def score_unscored(
    args: Config,
    samples: list[Sample],
    ctx: RolloutContext,
    *,
    batched: bool,
) -> None:
    """Score, in one call, the samples that have no reward and were neither aborted nor failed.

    ``batched`` (group_rm) hands the batched reward fn to the scorer; otherwise the per-sample
    reward fn (or the built-in rm type) scores each. Errors mark samples FAILED (the scorer's
    contract), never a zero reward.
    """
    need = [s for s in samples if s.reward is None and s.status not in _UNSCORABLE]
    if not need:
        return
    # Imported here: rewards/ pulls in graders (sympy, math-verify) that only scoring needs.
    from miles_sdk.rewards import score_samples

    batched_fn: BatchedRewardFn | None = ctx.batched_reward_fn if batched else None
    await score_samples(args, need, reward_fn=ctx.reward_fn, batched_reward_fn=batched_fn)


async def gather_or_cancel(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently; on the first error cancel the rest, wait for them, and re-raise
    that error as it is (a TaskGroup would wrap it in an ExceptionGroup, hiding the user's error)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
