"""Pieces shared by the train and eval rollouts: choosing the generate fn, running it, scoring."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.hooks import BatchedRewardFn, GenerateFn
from miles_sdk.rollout.context import RolloutContext
from miles_sdk.rollout.generate import apply_engine_output, engine_call, generate_with_engine
from miles_sdk.types import Sample

__all__ = [
    "BatchEngine",
    "GroupBatcher",
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


class GroupBatcher:
    """Sends a single-turn group (every sample on :func:`generate_with_engine`) to a
    :class:`BatchEngine` in one call, under the rollout's ``sglang_server_concurrency`` semaphore,
    which the per-sample path (a task and a generate call per sample) shares.

    A group is batched only while its slots are free and no per-sample group is in flight (one
    may be waiting for a slot): the batched group then takes its slots when the per-sample path
    would have, and in the same order. Each slot is given back as its request finishes.
    """

    def __init__(self, args: Config, ctx: RolloutContext, semaphore: asyncio.Semaphore) -> None:
        self.args = args
        self.ctx = ctx
        self.semaphore = semaphore
        engine = ctx.engine
        self.engine = engine if ctx.generate_fn is None and isinstance(engine, BatchEngine) else None
        self.slots_out = 0  # semaphore slots held by requests of batched groups
        self.per_sample_groups = 0  # groups in flight on the per-sample path

    def can_batch(self, group: Sequence[Sample]) -> bool:
        return (
            self.engine is not None
            and self.per_sample_groups == 0
            and self.args.sglang_server_concurrency - self.slots_out >= len(group)
            and not any(s.generate_function_path for s in group)
        )

    @contextlib.contextmanager
    def per_sample(self) -> Iterator[None]:
        """Around a group generated on the per-sample path."""
        self.per_sample_groups += 1
        try:
            yield
        finally:
            self.per_sample_groups -= 1

    async def generate(self, todo: Sequence[tuple[Sample, SamplingParams]]) -> float:
        """:func:`generate_with_engine` on each ``(sample, params)``, in one engine call: the same
        requests (:func:`engine_call`), answered in one wake-up. Returns the seconds the requests
        ran, summed over them (busy time, as the per-sample path sums it)."""
        engine = self.engine
        assert engine is not None, "GroupBatcher.generate: check can_batch first"
        sent: list[tuple[Sample, list[int]]] = []
        ids: list[list[int]] = []
        params: list[SamplingParams] = []
        shared: dict[tuple[object, object], SamplingParams] = {}  # equal params, one dict: parsed once
        for sample, sampling_params in todo:
            try:
                call = engine_call(self.args, sample, sampling_params, self.ctx)
            except Exception as exc:
                exc.add_note(_where(sample))
                raise
            if call is None:  # no budget left: TRUNCATED without an engine call
                continue
            sent.append((sample, call[0]))
            ids.append(call[0])
            p = call[1]
            params.append(shared.setdefault((p.get("sampling_seed"), p.get("max_new_tokens")), p))
        if not sent:
            return 0.0
        # The slots are free (can_batch): acquire() returns without waiting.
        for _ in sent:
            await self.semaphore.acquire()
        self.slots_out += len(sent)
        held = [True] * len(sent)
        busy = 0.0
        start = time.perf_counter()

        def give_back(index: int) -> None:
            if held[index]:
                held[index] = False
                self.slots_out -= 1
                self.semaphore.release()

        def done(index: int, output: EngineOutput) -> None:
            nonlocal busy
            if held[index]:
                busy += time.perf_counter() - start
            give_back(index)

        try:
            outputs = await engine.generate_batch(ids, params, on_done=done)
        except Exception as exc:
            exc.add_note(
                f"in generate function {hook_name(generate_with_engine)} on the samples of group "
                f"{sent[0][0].group_index} (index={[s.index for s, _ in sent]})"
            )
            raise
        finally:
            for index in range(len(sent)):  # cancelled or refused: no on_done for these
                give_back(index)
        for (sample, input_ids), out in zip(sent, outputs, strict=True):
            try:
                apply_engine_output(sample, input_ids, out, self.ctx)
            except Exception as exc:
                exc.add_note(_where(sample))
                raise
        return busy


def _where(sample: Sample) -> str:
    return (
        f"in generate function {hook_name(generate_with_engine)} on sample index={sample.index} "
        f"group={sample.group_index}"
    )
