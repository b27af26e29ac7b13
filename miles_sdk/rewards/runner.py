"""The reward stage of the rollout: score samples, and fail loudly per sample.

:func:`score_samples` is what the rollout calls. A reward that raises, times out, returns NaN or
a value that is not a reward marks *that* sample FAILED with ``metadata["reward_error"]``
(``"<hook or rm type>: <reason>"``); it is never turned into a 0 and never stops the others.
:func:`validate_labels` finds missing labels before training starts rather than mid-run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from miles_sdk.data.dataset import DEFAULT_LABEL_COLUMN
from miles_sdk.rewards.dapo import minerva_normalize
from miles_sdk.rewards.ifbench import IFBenchError, ifbench_instructions
from miles_sdk.rewards.labels import unusable_label
from miles_sdk.rewards.registry import (
    RewardConfigError,
    _base,
    check_rm_type,
    compute_builtin_reward,
    resolve_rm_type,
    rm_type_of,
)
from miles_sdk.types import Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config
    from miles_sdk.hooks import BatchedRewardFn, RewardFn

__all__ = [
    "RewardLabelError",
    "call_reward",
    "compute_builtin_reward",
    "is_async_callable",
    "score_samples",
    "shutdown_reward_threads",
    "validate_labels",
]

logger = logging.getLogger(__name__)

_SKIP = (Sample.Status.ABORTED, Sample.Status.FAILED)


class RewardLabelError(ValueError):
    """Rows or samples lack what their rm type needs (a label, gpqa's answer, ifbench metadata)."""


def hook_name(fn: object) -> str:
    """``module.qualname`` of a hook, for error messages."""
    target = getattr(fn, "func", fn)  # functools.partial
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def _fail(sample: Sample, source: str, reason: str) -> None:
    sample.status = Sample.Status.FAILED
    sample.metadata["reward_error"] = f"{source}: {reason}"
    logger.warning("reward failed for sample index=%s: %s: %s", sample.index, source, reason)


def _problem(args: Config, value: object) -> str | None:
    """Why ``value`` cannot be a reward, or None when it can."""
    # bool is an int: Miles takes True/False rewards as 1/0, and so does this SDK.
    if not isinstance(value, int | float | dict):
        return f"returned {type(value).__name__} {value!r:.80}; expected a float or a dict"
    if isinstance(value, int | float):
        return None if math.isfinite(value) else f"returned {value}"
    key = args.reward_key
    if key is None:
        return None
    if key not in value:
        return f"returned a dict without reward_key {key!r} (keys: {sorted(map(str, value))})"
    scalar = value[key]
    if not isinstance(scalar, int | float):
        return f"reward[{key!r}] is {type(scalar).__name__}; expected a number"
    return None if math.isfinite(scalar) else f"reward[{key!r}] is {scalar}"


def _accept(args: Config, sample: Sample, source: str, value: object) -> None:
    problem = _problem(args, value)
    if problem is not None:
        _fail(sample, source, problem)
    elif isinstance(value, dict):
        sample.reward = value
    elif isinstance(value, int | float):
        sample.reward = float(value)  # Miles's 0/1 ints become floats, the type Sample declares


BLOCKING_WARN_S = 1.0
"""An ``async def`` reward that holds the event loop longer than this in one stretch is reported."""

_warned_blocking: set[str] = set()
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def is_async_callable(fn: object) -> bool:
    """An ``async def`` function, an object with an ``async def __call__``, or a partial of one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = getattr(fn, "__call__", None)  # noqa: B004 - instances with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _reward_executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, workers), thread_name_prefix="miles-sdk-reward"
            )
        return _executor


def shutdown_reward_threads() -> None:
    """Stop the thread pool that runs plain ``def`` rewards (it is rebuilt on next use)."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is not None:
        # A reward still blocked past its timeout is not waited for: its result is already dropped.
        executor.shutdown(wait=False, cancel_futures=True)


async def call_reward(args: Config, fn: Callable[..., object], payload: object, *, name: str) -> object:
    """Call a reward hook (``async def`` or plain ``def``) on ``payload`` (a sample or a list of them).

    A plain function runs in a thread pool of ``reward_concurrency`` threads, with the caller's
    context (the rollout's tokenizer), so a blocking call in it neither stalls the other samples
    nor escapes ``reward_timeout``. A coroutine runs on the loop; a stretch of it that holds the
    loop longer than :data:`BLOCKING_WARN_S` is reported once per hook, since it serialises
    every sample and no timeout can interrupt it. ``reward_timeout`` applies to both forms.
    """

    async def run() -> object:
        if is_async_callable(fn):
            result = fn(args, payload)
        else:
            context = contextvars.copy_context()
            executor = _reward_executor(args.reward_concurrency)
            result = await asyncio.get_running_loop().run_in_executor(
                executor, context.run, fn, args, payload
            )
        if inspect.isawaitable(result):
            result = await _LoopHoldWatch(result.__await__(), name)
        return result

    return await asyncio.wait_for(run(), args.reward_timeout)


_NOT_STARTED = object()


class _LoopHoldWatch:
    """Awaits an awaitable's steps one by one, timing each stretch it runs without yielding to the
    loop. ``yielded``: what its first step yielded, for a reward whose first stretch already ran
    (:func:`_first_stretch`); awaiting goes on from there. ``context``: where each step runs (the
    caller's when None)."""

    def __init__(
        self,
        steps: Generator[Any, Any, object],
        name: str,
        *,
        yielded: Any = _NOT_STARTED,
        context: contextvars.Context | None = None,
    ) -> None:
        self._steps = steps
        self._name = name
        self._yielded = yielded
        self._context = context

    def __await__(self) -> Generator[Any, Any, object]:
        steps, context = self._steps, self._context
        send: Any = None
        error: BaseException | None = None
        if self._yielded is not _NOT_STARTED:
            try:
                send = yield self._yielded
            except GeneratorExit:
                _close(steps)
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on to the reward, as await would
                error = exc
        while True:
            start = time.perf_counter()
            try:
                if context is None:
                    yielded = steps.send(send) if error is None else steps.throw(error)
                else:  # the reward's own context, as its own task would run it
                    yielded = (
                        context.run(steps.send, send) if error is None else context.run(steps.throw, error)
                    )
            except StopIteration as stop:
                _check_hold(self._name, time.perf_counter() - start)
                return stop.value
            except BaseException:
                _check_hold(self._name, time.perf_counter() - start)
                raise
            _check_hold(self._name, time.perf_counter() - start)
            try:
                send, error = (yield yielded), None
            except GeneratorExit:
                _close(steps)
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on to the reward, as await would
                send, error = None, exc


def _close(steps: object) -> None:
    close = getattr(steps, "close", None)
    if callable(close):
        close()


def _check_hold(name: str, held: float) -> None:
    """Warn, once per hook, about a stretch of an ``async def`` reward that held the loop too long."""
    if held > BLOCKING_WARN_S and name not in _warned_blocking:
        _warned_blocking.add(name)
        logger.warning(
            "reward function %s held the event loop for %.1f s without awaiting: a blocking call "
            "(time.sleep, requests.get, a slow grader) inside an async def makes every sample wait "
            "for it, one after another, and reward_timeout cannot interrupt it. Make it a plain def "
            "(run in a thread pool, timeout applied), or await an async client instead",
            name,
            held,
        )


def _reason(exc: BaseException, timeout: float | None) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after reward_timeout={timeout}s"
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:  # the innermost frame: usually the line of the user's reward that raised
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) + where


async def score_samples(
    args: Config,
    samples: list[Sample],
    *,
    reward_fn: RewardFn | None = None,
    batched_reward_fn: BatchedRewardFn | None = None,
) -> None:
    """Set ``reward`` on each sample that has none and is not ABORTED or FAILED.

    With ``batched_reward_fn`` the pending samples are scored in one call; else each sample is
    scored with ``reward_fn`` (default: the built-in rm type), at most ``reward_concurrency`` at a
    time. Failures mark the sample FAILED with ``metadata["reward_error"]`` (see the module doc).
    An ``async def`` reward that does not suspend costs no task (:func:`_score_async`); a plain
    ``def`` one runs in the thread pool (:func:`call_reward`).
    """
    pending = [s for s in samples if s.reward is None and s.status not in _SKIP]
    if not pending:
        return
    timeout = args.reward_timeout
    if batched_reward_fn is not None:
        await _score_batched(args, pending, batched_reward_fn, timeout)
        return
    fn: RewardFn = reward_fn if reward_fn is not None else compute_builtin_reward
    hook = hook_name(reward_fn) if reward_fn is not None else None
    if is_async_callable(fn) and (timeout is None or timeout > 0):
        await _score_async(args, pending, fn, hook, timeout)
        return
    limit = asyncio.Semaphore(max(1, args.reward_concurrency))

    async def score_one(sample: Sample) -> None:
        source = hook if hook is not None else _rm_source(args, sample)
        if source is None:
            return
        async with limit:
            try:
                value: object = await call_reward(args, fn, sample, name=source)
            except Exception as exc:  # noqa: BLE001 - any reward bug is recorded on its sample
                _fail(sample, source, _reason(exc, timeout))
                return
        _accept(args, sample, source, value)

    if len(pending) == 1:  # the default rollout scores each sample as it finishes: no task for one
        await score_one(pending[0])
        return
    await asyncio.gather(*(score_one(s) for s in pending))


def _rm_source(args: Config, sample: Sample) -> str | None:
    """The built-in rm type that scores ``sample`` (its name in errors), or None after marking the
    sample FAILED when it has none that is valid."""
    try:
        return resolve_rm_type(args, sample)
    except RewardConfigError as exc:
        _fail(sample, "rm_type", str(exc))
        return None


def _first_stretch(
    fn: RewardFn, args: Config, sample: Sample, name: str
) -> tuple[bool, object, Generator[Any, Any, object] | None]:
    """Call an ``async def`` reward and run it up to its first suspension, timed like every stretch
    (:func:`_check_hold`). ``(True, value, None)`` when it finished there (most rewards: string
    rules, no I/O), else ``(False, what it yielded, its step iterator)`` to go on awaiting."""
    result: object = fn(args, sample)
    if not inspect.isawaitable(result):
        return True, result, None
    steps = result.__await__()
    start = time.perf_counter()
    try:
        yielded = steps.send(None)
    except StopIteration as stop:
        _check_hold(name, time.perf_counter() - start)
        return True, stop.value, None
    except BaseException:
        _check_hold(name, time.perf_counter() - start)
        raise
    _check_hold(name, time.perf_counter() - start)
    return False, yielded, steps


async def _score_async(
    args: Config, pending: list[Sample], fn: RewardFn, hook: str | None, timeout: float | None
) -> None:
    """Score ``pending`` with an ``async def`` reward without a task, ``wait_for`` or watcher per
    sample when the rewards do not suspend (string rules, no I/O: most rewards).

    Each sample's reward runs in a copy of the caller's context, as in a task of its own, up to its
    first suspension (:func:`_first_stretch`), one sample after another in this task. A reward that
    finishes there is accepted at once. One that suspends is awaited to its end by the task that
    started it, so everything it learnt of its task (``asyncio.current_task()``, an aiohttp timer,
    an ``asyncio.timeout``) stays true, under ``reward_timeout`` counted from its start; the samples
    after it go on in a new task (:func:`_score_from`), so rewards that wait on I/O still wait
    together. At most ``reward_concurrency`` rewards are started and unfinished at a time.
    """
    limit = asyncio.Semaphore(max(1, args.reward_concurrency))
    spawned: list[asyncio.Task[None]] = []
    try:
        await _score_from(args, pending, 0, fn, hook, timeout, limit, spawned)
        done = 0
        while done < len(spawned):  # a spawned run may spawn the next one
            await spawned[done]
            done += 1
    except BaseException:
        for task in spawned:
            task.cancel()
        raise


async def _score_from(
    args: Config,
    pending: list[Sample],
    start: int,
    fn: RewardFn,
    hook: str | None,
    timeout: float | None,
    limit: asyncio.Semaphore,
    spawned: list[asyncio.Task[None]],
) -> None:
    """Score ``pending[start:]`` in this task until one reward suspends (see :func:`_score_async`)."""
    loop = asyncio.get_running_loop()
    for i in range(start, len(pending)):
        sample = pending[i]
        source = hook if hook is not None else _rm_source(args, sample)
        if source is None:
            continue
        # A slot is a reward waiting on I/O. One that finishes in its first stretch never waits
        # next to another: it takes a slot only when all are taken (it waits for one first).
        held = limit.locked()
        if held:
            await limit.acquire()
        deadline = None if timeout is None else loop.time() + timeout
        context = contextvars.copy_context()
        try:
            finished, value, steps = context.run(_first_stretch, fn, args, sample, source)
        except Exception as exc:  # noqa: BLE001 - any reward bug is recorded on its sample
            if held:
                limit.release()
            _fail(sample, source, _reason(exc, timeout))
            continue
        except BaseException:
            if held:
                limit.release()
            raise
        if finished:
            if held:
                limit.release()
            _accept(args, sample, source, value)
            continue
        if not held:  # free when checked above, and nothing else ran since: returns at once
            await limit.acquire()
        assert steps is not None
        if i + 1 < len(pending):
            rest = _score_from(args, pending, i + 1, fn, hook, timeout, limit, spawned)
            spawned.append(loop.create_task(rest))
        try:
            async with asyncio.timeout_at(deadline):
                value = await _LoopHoldWatch(steps, source, yielded=value, context=context)
        except Exception as exc:  # noqa: BLE001 - any reward bug is recorded on its sample
            _fail(sample, source, _reason(exc, timeout))
            return
        finally:
            limit.release()
        _accept(args, sample, source, value)
        return


async def _score_batched(
    args: Config, pending: list[Sample], fn: BatchedRewardFn, timeout: float | None
) -> None:
    source = hook_name(fn)
    try:
        values = await call_reward(args, fn, pending, name=source)
    except Exception as exc:  # noqa: BLE001 - the whole batch failed; each sample says why
        for sample in pending:
            _fail(sample, source, _reason(exc, timeout))
        return
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        for sample in pending:
            _fail(
                sample,
                source,
                f"returned {type(values).__name__}; expected a list with one reward per sample",
            )
        return
    if len(values) != len(pending):
        for sample in pending:
            _fail(sample, source, f"returned {len(values)} rewards for {len(pending)} samples")
        return
    for sample, value in zip(pending, values, strict=True):
        _accept(args, sample, source, value)


# -- label validation ---------------------------------------------------------------------------

_LABELLED = frozenset({"math", "deepscaler", "dapo", "f1"})


def _row_view(args: Config, row: Sample | Mapping[str, Any]) -> tuple[Any, Mapping[str, Any]]:
    if isinstance(row, Sample):
        return row.label, row.metadata if isinstance(row.metadata, Mapping) else {}
    label = row.get(args.label_key if args.label_key else DEFAULT_LABEL_COLUMN)
    metadata = row.get(args.metadata_key) or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {}
    return label, metadata if isinstance(metadata, Mapping) else {}


def _label_problem(rm_type: str, label: Any, metadata: Mapping[str, Any], where: str) -> str | None:
    base, _ = _base(rm_type)
    missing = label is None or (isinstance(label, str) and not label.strip())
    if base in _LABELLED and missing:
        return f"rm_type {rm_type!r} needs a label ({where})"
    unusable = unusable_label(base, label, metadata)  # a raw label of a type the grader cannot read
    if unusable is not None:
        return f"{unusable} ({where})"
    if base == "dapo":
        try:
            int(float(minerva_normalize(str(label))))
        except ValueError:
            return f"rm_type 'dapo' needs an integer label, got {label!r}"
    if base == "gpqa" and missing and not metadata.get("correct_letter"):
        return f"rm_type 'gpqa' needs a label or metadata['correct_letter'] ({where})"
    if base == "ifbench":
        try:
            ifbench_instructions(metadata)
        except IFBenchError as exc:
            return str(exc)
    return None


def validate_labels(args: Config, rows: Sequence[Sample | Mapping[str, Any]]) -> None:
    """Raise :class:`RewardLabelError` when a sample or dataset row lacks what its built-in rm
    type needs. Rows are raw dataset dicts read with ``label_key`` / ``metadata_key``.

    Call it before training when no custom reward model is used. The message lists the first
    few culprits by position and the number of bad rows.
    """
    problems: list[str] = []
    for pos, row in enumerate(rows):
        label, metadata = _row_view(args, row)
        try:
            rm_type = check_rm_type(rm_type_of(args, metadata))
        except RewardConfigError as exc:
            problems.append(f"row {pos}: {exc}")
            continue
        if isinstance(row, Sample):
            where = f"sample.label={label!r}"
        else:
            unset = f"label_key unset, column {DEFAULT_LABEL_COLUMN!r}"
            where = f"label_key={args.label_key!r}" if args.label_key else unset
        problem = _label_problem(rm_type, label, metadata, where)
        if problem is not None:
            problems.append(f"row {pos}: {problem}")
    if problems:
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise RewardLabelError(f"{len(problems)} of {len(rows)} rows cannot be scored:\n  {shown}{more}")
