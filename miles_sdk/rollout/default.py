"""The default rollout (Miles's ``sglang_rollout.generate_rollout``): generate, score, filter, over-sample.

One training rollout, in order:

1. Draw ``over_sampling_batch_size`` groups from the data source whenever kept + in-flight groups
   fall short of ``rollout_batch_size``. Every sample runs concurrently under a semaphore of
   ``sglang_server_concurrency``: generate fn (per-sample override, else custom, else single
   turn), then reward (per sample; with ``group_rm`` per group in one batched call). A custom or
   per-sample generate fn is called once per sample, in a task of its own, as in Miles. Single-turn
   groups on an engine with ``generate_batch`` (the embedded one) go to the engine in one call per
   group and are scored together when the group is done: the same requests, seeds and rewards
   without a task and an engine wake-up per sample.
2. Each finished group is checked: a group with a sample lacking a reward (FAILED scoring, or
   ABORTED by the engine/generate fn without a reward) is dropped and counted
   (``rollout/reward_failed`` samples, ``rollout/dropped_groups/{reward_failed,unscored_aborted}``).
   A sample FAILED by an agent (``metadata["agent_error"]``) counts as ``rollout/agent_failed``
   (``rollout/dropped_groups/agent_failed``), not as a reward failure.
   Otherwise the dynamic filter decides; drops count as ``rollout/dynamic_filter/drop_{reason}``.
3. Once ``rollout_batch_size`` groups are kept, in-flight requests are aborted and awaited, so no
   request outlives the rollout. With ``partial_rollout`` the unfinished groups go back to the
   data source (``add_samples``) keeping their tokens; they resume from them next time.
4. ``rollout_sample_filter`` runs on the kept groups, then ``rollout_all_samples_process`` on
   every finished group (dropped ones too). Groups come out sorted by sample index.

Failed samples are never given an invented reward (0, the group mean): that would train on a
made-up signal. With ``reward_leave_out_failed`` a group keeps its scored samples
and leaves the FAILED ones out where the estimator allows it (:func:`can_leave_out_failed`:
group-normalised estimators need 2 scored samples, per-sample ones 1); otherwise the group is
dropped. ``rollout/reward_failed_frac`` is the failed fraction of the finished samples. The error
stays visible in the metrics, the log, ``sample.metadata["reward_error"]`` and the all-samples
hook (which sees whole groups). If the first ``rollout_batch_size`` finished groups all failed, the reward
function is broken: the rollout raises with the first error instead of draining the dataset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator

from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import DataSource
from miles_sdk.rollout._shared import (
    GroupBatcher,
    gather_or_cancel,
    pick_generate_fn,
    run_generate_fn,
    score_unscored,
)
from miles_sdk.rollout.context import RolloutContext, get_rollout_context
from miles_sdk.rollout.eval import eval_rollout
from miles_sdk.rollout.filters import call_dynamic_filter
from miles_sdk.rollout.generate import sampling_params_from_args
from miles_sdk.rollout.shapes import check_groups, describe_hook
from miles_sdk.types import Metrics, RolloutFnEvalOutput, RolloutFnTrainOutput, Sample

__all__ = ["RolloutError", "can_leave_out_failed", "generate_rollout", "train_rollout"]

logger = logging.getLogger(__name__)

_FINISHED = (Sample.Status.COMPLETED, Sample.Status.TRUNCATED, Sample.Status.FAILED)
_UNSCORABLE = (Sample.Status.ABORTED, Sample.Status.FAILED)


_MAX_ROUNDS_WITHOUT_A_KEPT_GROUP = 1000


class RolloutError(RuntimeError):
    """The rollout cannot make progress (empty data source, reward function failing every time)."""


async def generate_rollout(
    args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """The default ``RolloutFn``: :func:`train_rollout`, or :func:`eval_rollout` when evaluating.

    Needs a :class:`RolloutContext` installed (the Trainer does it; see :func:`get_rollout_context`).
    """
    if evaluation:
        return await eval_rollout(args, rollout_id)
    return await train_rollout(args, rollout_id, data_source)


async def train_rollout(args: Config, rollout_id: int, data_source: DataSource) -> RolloutFnTrainOutput:
    """One training rollout: ``rollout_batch_size`` kept groups (see the module doc)."""
    return await _TrainRollout(args, rollout_id, data_source, get_rollout_context()).run()


_LEAVE_OUT_MIN_LEFT = {
    "grpo": 2,
    "gspo": 2,
    "reinforce_plus_plus_baseline": 2,
    "reinforce_plus_plus": 1,
    "ppo": 1,
}
"""Scored samples a group needs to train without its failed ones, per estimator: a group mean
(and std) over fewer than 2 rewards gives every sample a zero advantage."""


def can_leave_out_failed(args: Config, scored: int) -> bool:
    """Whether a group with ``scored`` scored samples is kept without its FAILED ones."""
    if not args.reward_leave_out_failed or args.group_rm:
        return False
    needed = _LEAVE_OUT_MIN_LEFT.get(args.advantage_estimator)
    return needed is not None and scored >= needed


def _agent_failed(sample: Sample) -> bool:
    return "agent_error" in sample.metadata and "reward_error" not in sample.metadata


def _group_key(group: list[Sample]) -> int:
    indices = [s.index for s in group if s.index is not None]
    return min(indices) if indices else -1


class _TrainRollout:
    def __init__(self, args: Config, rollout_id: int, data_source: DataSource, ctx: RolloutContext) -> None:
        self.args = args
        self.rollout_id = rollout_id
        self.data_source = data_source
        self.ctx = ctx
        self.semaphore = asyncio.Semaphore(args.sglang_server_concurrency)
        self.batcher = GroupBatcher(args, ctx, self.semaphore)
        self.params = sampling_params_from_args(args)
        self.aborted = False
        # task -> the group as drawn, so an unfinished group can go back to the data source whole
        self.pending: dict[asyncio.Task[list[Sample]], list[Sample]] = {}
        self.counts: Counter[str] = Counter()
        self.busy: dict[str, float] = {"perf/generate_time_sum": 0.0, "perf/reward_time_sum": 0.0}
        self.first_reward_error: str | None = None
        self.unfiltered_sum, self.unfiltered_n = 0.0, 0  # over every scored group (_count_unfiltered)
        # The latest groups the dynamic filter dropped: what fills the batch at over_sampling_max_groups.
        self.filtered: collections.deque[list[Sample]] = collections.deque(maxlen=args.rollout_batch_size)

    async def run(self) -> RolloutFnTrainOutput:
        start = time.perf_counter()
        target = self.args.rollout_batch_size
        kept: list[list[Sample]] = []
        finished: list[list[Sample]] = []
        try:
            while len(kept) < target:
                while len(kept) + len(self.pending) < target and not self._capped(kept):
                    self._submit(self._draw())
                if not self.pending:  # over_sampling_max_groups reached: fill with dropped groups
                    kept.extend(self._refill(target - len(kept)))
                    break
                done, _ = await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
                # Sorted so that which group fills the last slot does not depend on task order.
                for group in sorted((self._take(t) for t in done), key=_group_key):
                    finished.append(group)
                    group = self._leave_out_failed(group)
                    if not await self._accept(group):
                        continue
                    if len(kept) < target:
                        kept.append(group)
                    else:
                        self.counts["rollout/extra_groups_discarded"] += 1
                self._check_progress(kept)
            await self._abort_in_flight()
        except BaseException:
            await self._cancel_in_flight()
            raise

        kept.sort(key=_group_key)
        finished.sort(key=_group_key)
        if self.ctx.rollout_sample_filter is not None:
            self.ctx.rollout_sample_filter(self.args, kept)
        if self.ctx.rollout_all_samples_process is not None:
            self.ctx.rollout_all_samples_process(self.args, finished, self.data_source)
        return RolloutFnTrainOutput(samples=kept, metrics=self._metrics(kept, time.perf_counter() - start))

    # -- drawing and generating ----------------------------------------------------------------

    def _draw(self) -> list[list[Sample]]:
        """``get_samples`` of the data source, checked: a flat list or a coroutine is named here,
        not met later as ``'Sample' object is not iterable`` deep inside the rollout."""
        source = self.data_source
        where = describe_hook(
            source, "get_samples", flag="--data-source-path", path=self.args.data_source_path
        )
        drawn = source.get_samples(self.args.effective_over_sampling_batch_size)
        return check_groups(drawn, f"data source {where}")

    def _submit(self, groups: list[list[Sample]]) -> None:
        n = self.args.effective_over_sampling_batch_size
        if not groups:
            raise RolloutError(
                f"data source {type(self.data_source).__name__}.get_samples({n}) returned no groups "
                f"in rollout {self.rollout_id}; the rollout cannot fill rollout_batch_size"
            )
        self.counts["rollout/over_sampling_rounds"] += 1
        self.counts["rollout/groups_drawn"] += len(groups)
        rounds = self.counts["rollout/over_sampling_rounds"]
        if rounds in (10, 100, 1000, 10000):
            # Miles loops silently when a filter drops everything (e.g. all-zero rewards); say so.
            drops = {k: v for k, v in self.counts.items() if "drop" in k}
            logger.warning(
                "rollout %d: %d over-sampling rounds drew %d groups so far; drops: %s",
                self.rollout_id,
                rounds,
                self.counts["rollout/groups_drawn"],
                drops,
            )
        for group in groups:
            if not group:
                raise RolloutError(f"data source {type(self.data_source).__name__} returned an empty group")
            task = asyncio.create_task(self._generate_group(group))
            self.pending[task] = group

    def _take(self, task: asyncio.Task[list[Sample]]) -> list[Sample]:
        del self.pending[task]
        return task.result()

    async def _generate_group(self, group: list[Sample]) -> list[Sample]:
        if self.batcher.can_batch(group):
            samples = await self._generate_batched(group)
        else:
            with self.batcher.per_sample():
                results = await gather_or_cancel([self._generate_sample(s, i) for i, s in enumerate(group)])
            samples = [s for result in results for s in result]
        if self.args.group_rm and not self.aborted:
            with self._busy("perf/reward_time_sum"):
                await score_unscored(self.args, samples, self.ctx, batched=True)
        return samples

    def _prepare(self, sample: Sample) -> None:
        """What every sample gets before its generation, on either path."""
        if sample.rollout_id is None:
            sample.rollout_id = self.rollout_id
        if self.args.partial_rollout and self.args.mask_offpolicy_in_partial_rollout:
            self._mask_offpolicy(sample)

    def _sample_params(self, index_in_group: int) -> SamplingParams:
        params = SamplingParams(**self.params)
        if self.args.sglang_enable_deterministic_inference:
            params["sampling_seed"] = self.args.rollout_seed + index_in_group
        return params

    async def _generate_batched(self, group: list[Sample]) -> list[Sample]:
        """:meth:`_generate_sample` for a whole single-turn group: the same engine requests, in
        the group's order, sent in one call whose answers come back in one wake-up
        (:class:`GroupBatcher`); then the group's unscored samples in one reward call."""
        args = self.args
        todo: list[tuple[Sample, SamplingParams]] = []
        deterministic = args.sglang_enable_deterministic_inference
        for i, sample in enumerate(group):
            self._prepare(sample)
            if sample.status not in _FINISHED:  # else finished in an earlier rollout: scored below
                # engine_call copies the params: without a seed the rollout's own dict will do.
                todo.append((sample, self._sample_params(i) if deterministic else self.params))
        if todo and self.aborted:
            for sample, _ in todo:
                sample.status = Sample.Status.ABORTED
            todo = []
        if todo:
            self.counts["rollout/generate_calls"] += len(todo)
            self.busy["perf/generate_time_sum"] += await self.batcher.generate(todo)
        if not args.group_rm:
            scored = sum(1 for s in group if s.reward is None and s.status not in _UNSCORABLE)
            start = time.perf_counter()
            await score_unscored(args, group, self.ctx, batched=False)
            # Busy time summed over samples, as the per-sample path sums it: they ran side by side.
            self.busy["perf/reward_time_sum"] += scored * (time.perf_counter() - start)
        return list(group)

    async def _generate_sample(self, sample: Sample, index_in_group: int) -> list[Sample]:
        args = self.args
        self._prepare(sample)
        if sample.status in _FINISHED:
            # Finished in an earlier rollout, returned with its unfinished group-mates.
            if not args.group_rm:
                await score_unscored(args, [sample], self.ctx, batched=False)
            return [sample]
        params = self._sample_params(index_in_group)
        async with self.semaphore:
            if self.aborted:
                sample.status = Sample.Status.ABORTED
                return [sample]
            self.counts["rollout/generate_calls"] += 1
            fn = pick_generate_fn(self.ctx, sample)
            with self._busy("perf/generate_time_sum"):
                samples = await run_generate_fn(fn, args, sample, params)
        if not args.group_rm:
            # As in Miles, a list from a generate function goes to the batched reward in one call.
            as_batch = len(samples) > 1 and self.ctx.batched_reward_fn is not None
            with self._busy("perf/reward_time_sum"):
                await score_unscored(args, samples, self.ctx, batched=as_batch)
        return samples

    @contextlib.contextmanager
    def _busy(self, key: str) -> Iterator[None]:
        """Add the seconds spent inside to ``key``: summed over concurrent samples (busy time, not
        wall time), so generate and reward cost can be compared although they overlap."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.busy[key] += time.perf_counter() - start

    def _mask_offpolicy(self, sample: Sample) -> None:
        """Zero the loss mask of tokens generated under older weights before resuming.

        Tokens before the sample's last engine call were masked when it was last resumed, so
        comparing the last recorded version with the engine's is enough.
        """
        versions = sample.weight_versions
        if sample.response_length > 0 and versions and versions[-1] != self.ctx.engine.weight_version:
            sample.loss_mask = [0] * sample.response_length

    # -- judging finished groups ---------------------------------------------------------------

    def _leave_out_failed(self, group: list[Sample]) -> list[Sample]:
        """The group without its FAILED samples when the estimator allows it, else the group."""
        self.counts["rollout/samples_finished"] += len(group)
        failed = [s for s in group if s.status is Sample.Status.FAILED]
        rest = [s for s in group if s.status is not Sample.Status.FAILED]
        if not failed or not can_leave_out_failed(self.args, len(rest)):
            return group
        self.counts["rollout/groups_kept_without_failed"] += 1
        kind, error = self._count_failed(failed)
        logger.info(
            "rollout %d: group %d keeps %d of %d samples, %s: %s",
            self.rollout_id,
            _group_key(group),
            len(rest),
            len(group),
            kind.replace("_", " "),
            error,
        )
        return rest

    def _count_failed(self, failed: list[Sample]) -> tuple[str, str]:
        """Count FAILED samples as ``rollout/agent_failed`` (the generate function's agent raised or
        timed out: ``metadata["agent_error"]``) or ``rollout/reward_failed``; the first one's kind
        and error. An agent failure is not reported as a failing reward."""
        for s in failed:
            self.counts["rollout/agent_failed" if _agent_failed(s) else "rollout/reward_failed"] += 1
        first = failed[0]
        kind = "agent_failed" if _agent_failed(first) else "reward_failed"
        key = "agent_error" if kind == "agent_failed" else "reward_error"
        error = str(first.metadata.get(key, "unknown error"))
        if self.first_reward_error is None:
            self.first_reward_error = f"sample index={first.index}: {kind.replace('_', ' ')}: {error}"
        return kind, error

    async def _accept(self, group: list[Sample]) -> bool:
        failed = [s for s in group if s.status is Sample.Status.FAILED]
        if failed:
            kind, error = self._count_failed(failed)
            self.counts[f"rollout/dropped_groups/{kind}"] += 1
            logger.warning(
                "rollout %d: dropped group %d, %s: %s",
                self.rollout_id,
                _group_key(group),
                kind.replace("_", " "),
                error,
            )
            return False
        if any(s.reward is None for s in group):
            self.counts["rollout/dropped_groups/unscored_aborted"] += 1
            return False
        self._count_unfiltered(group)
        verdict = await call_dynamic_filter(self.ctx.dynamic_sampling_filter, self.args, group)
        if not verdict.keep:
            self.counts[f"rollout/dynamic_filter/drop_{verdict.reason or 'unspecified'}"] += 1
            self.filtered.append(group)
        return verdict.keep

    def _count_unfiltered(self, group: list[Sample]) -> None:
        """Sum the rewards of every scored group, before the dynamic filter picks some: their mean
        is what the policy scores on the prompts it drew (the kept groups' mean is biased by the
        filter: with check_reward_nonzero_std a kept group always holds a right answer)."""
        try:
            values = [s.get_reward_value(self.args.reward_key) for s in group]
        except ValueError:  # dict rewards without reward_key: scalars only after post-process
            return
        self.unfiltered_sum += sum(values)
        self.unfiltered_n += len(values)

    def _capped(self, kept: list[list[Sample]]) -> bool:
        """Whether over_sampling_max_groups stops the drawing: the cap is reached, a group is kept
        and the dropped groups can fill what in-flight groups may not (a rollout never ends empty)."""
        cap = self.args.over_sampling_max_groups
        if cap is None or not kept or self.counts["rollout/groups_drawn"] < cap:
            return False
        return len(kept) + len(self.pending) + len(self.filtered) >= self.args.rollout_batch_size

    def _refill(self, missing: int) -> list[list[Sample]]:
        refill = list(self.filtered)[-missing:]
        self.counts["rollout/over_sampling_refilled_groups"] += len(refill)
        logger.info(
            "rollout %d: over_sampling_max_groups=%d reached with %d of %d groups kept; %d dropped "
            "groups fill the batch",
            self.rollout_id,
            self.args.over_sampling_max_groups,
            self.args.rollout_batch_size - missing,
            self.args.rollout_batch_size,
            len(refill),
        )
        return refill

    def _check_progress(self, kept: list[list[Sample]]) -> None:
        failed_groups = (
            self.counts["rollout/dropped_groups/reward_failed"] + self.counts["rollout/dropped_groups/agent_failed"]
        )
        if not kept and failed_groups >= self.args.rollout_batch_size:
            raise RolloutError(
                f"rollout {self.rollout_id}: the first {failed_groups} finished groups all failed reward "
                f"scoring or their agent; first error: {self.first_reward_error}"
            )
        # Miles loops forever when the dynamic filter drops everything (e.g. a reward that is 0 for
        # every sample with check_reward_nonzero_std); stop once that is evidently the case.
        rounds = self.counts["rollout/over_sampling_rounds"]
        if not kept and rounds >= _MAX_ROUNDS_WITHOUT_A_KEPT_GROUP:
            drops = {k: v for k, v in self.counts.items() if "drop" in k}
            raise RolloutError(
                f"rollout {self.rollout_id}: {rounds} over-sampling rounds "
                f"({self.counts['rollout/groups_drawn']} groups) kept no group; drops: {drops}. The dynamic "
                "sampling filter rejects everything: check the reward (is it constant?) and the filter"
            )

    # -- ending the rollout --------------------------------------------------------------------

    async def _abort_in_flight(self) -> None:
        """Abort what is still generating and wait for it; with partial_rollout, return it."""
        self.aborted = True
        if not self.pending:
            return
        self.counts["rollout/aborted_groups"] += len(self.pending)
        await self.ctx.engine.abort_all()
        drawn = list(self.pending.values())
        results = await asyncio.gather(*self.pending, return_exceptions=True)
        self.pending.clear()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if not self.args.partial_rollout:
            return
        back: list[list[Sample]] = []
        for original, result in zip(drawn, results, strict=True):
            assert not isinstance(result, BaseException)
            if len(result) != len(original):
                # A generate fn that returned several samples per sample cannot be resumed.
                self.counts["rollout/partial_groups_not_resumable"] += 1
                continue
            for s in result:
                if s.response_length > 0:
                    s.metadata.setdefault("start_rollout_id", self.rollout_id)
            back.append(result)
        if back:
            self.data_source.add_samples(back)
        self.counts["rollout/partial_groups_returned"] += len(back)

    async def _cancel_in_flight(self) -> None:
        """On error: stop everything this rollout started before the exception propagates."""
        self.aborted = True
        tasks = list(self.pending)
        self.pending.clear()
        for t in tasks:
            t.cancel()
        try:
            await self.ctx.engine.abort_all()
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _metrics(self, kept: list[list[Sample]], seconds: float) -> Metrics:
        samples = [s for g in kept for s in g]
        n = max(len(samples), 1)
        metrics: Metrics = {k: float(v) for k, v in self.counts.items()} | self.busy
        metrics.update(
            {
                "rollout/time_s": seconds,
                "rollout/groups_kept": float(len(kept)),
                "rollout/samples_kept": float(len(samples)),
                "rollout/truncated_ratio": sum(s.status is Sample.Status.TRUNCATED for s in samples) / n,
                "rollout/aborted_samples": float(sum(s.status is Sample.Status.ABORTED for s in samples)),
                "rollout/response_len_mean": sum(s.response_length for s in samples) / n,
            }
        )
        metrics.setdefault("rollout/reward_failed", 0.0)
        metrics["rollout/reward_failed_frac"] = metrics["rollout/reward_failed"] / max(
            self.counts["rollout/samples_finished"], 1
        )
        metrics.setdefault("rollout/aborted_groups", 0.0)
        if self.unfiltered_n:
            metrics["rollout/reward_mean_unfiltered"] = self.unfiltered_sum / self.unfiltered_n
        return metrics
