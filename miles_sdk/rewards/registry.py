"""The built-in rm types: which one a sample uses, and scoring a sample with it.

Selection order (Miles's): ``sample.metadata["rm_type"]``, then ``args.rm_type``.

``boxed_<type>`` grades the content of the response's last ``\\boxed{}`` with ``<type>``'s
comparison. In Miles the prefix replaces the response by that content and then runs ``<type>``'s
own extraction on it, which looks for a ``\\boxed{}`` / ``</think>`` / ``Answer:`` that is gone,
so ``boxed_math``, ``boxed_deepscaler`` and ``boxed_dapo`` always score 0 there. Here the boxed
content *is* the extracted answer, so those types work; a response without a box scores as
"no answer" (0, or -1 for dapo).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from miles_sdk.config import BUILTIN_RM_TYPES
from miles_sdk.rewards._extract import last_boxed_content
from miles_sdk.rewards._pool import run_cpu_bound
from miles_sdk.rewards.dapo import dapo_extract, dapo_score_answer
from miles_sdk.rewards.deepscaler import deepscaler_extract
from miles_sdk.rewards.f1 import f1_reward
from miles_sdk.rewards.gpqa import gpqa_reward
from miles_sdk.rewards.ifbench import ifbench_reward
from miles_sdk.rewards.math import grade_math_answer, quick_math_verdict
from miles_sdk.rewards.random_rm import deterministic_random_reward, random_reward
from miles_sdk.rewards.remote import remote_rm
from miles_sdk.types import RewardValue, Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = [
    "BOXED_PREFIX",
    "CPU_HEAVY_RM_TYPES",
    "RM_TYPES",
    "RewardConfigError",
    "compute_builtin_reward",
    "resolve_rm_type",
    "score_builtin_sync",
]

RM_TYPES: tuple[str, ...] = BUILTIN_RM_TYPES
"""The built-in rm types; each also exists with the ``boxed_`` prefix."""
BOXED_PREFIX = "boxed_"
CPU_HEAVY_RM_TYPES: frozenset[str] = frozenset({"math", "deepscaler"})
"""Types graded off the event loop (sympy via math-verify), in the reward worker pool."""


class RewardConfigError(ValueError):
    """No rm type is set for a sample, or the one set is unknown."""


def _base(rm_type: str) -> tuple[str, bool]:
    if rm_type.startswith(BOXED_PREFIX):
        return rm_type[len(BOXED_PREFIX) :], True
    return rm_type, False


def rm_type_of(args: Config, metadata: Mapping[str, Any] | None) -> str | None:
    """The rm type named by a sample's (or row's) metadata, else by ``args``; None when neither."""
    named = metadata.get("rm_type") if isinstance(metadata, Mapping) else None
    chosen = named if isinstance(named, str) and named.strip() else args.rm_type
    return chosen.strip() if chosen and chosen.strip() else None


def check_rm_type(rm_type: str | None) -> str:
    """``rm_type`` itself when it names a built-in type; a RewardConfigError otherwise."""
    if rm_type is None:
        raise RewardConfigError(
            "no reward: set Config.rm_type (--rm-type), metadata['rm_type'] per sample, or pass a reward model"
        )
    base, _ = _base(rm_type)
    if base not in RM_TYPES:
        raise RewardConfigError(
            f"unknown rm_type {rm_type!r}; known: {', '.join(RM_TYPES)} (each optionally prefixed with 'boxed_')"
        )
    return rm_type


def resolve_rm_type(args: Config, sample: Sample) -> str:
    """The rm type that scores ``sample``: ``sample.reward_spec.rm_type`` (Miles's per-sample spec),
    else ``metadata["rm_type"]``, else ``args.rm_type``."""
    spec = sample.reward_spec
    if spec is not None and spec.rm_type and spec.rm_type.strip():
        return check_rm_type(spec.rm_type.strip())
    return check_rm_type(rm_type_of(args, sample.metadata))


def _need_label(rm_type: str, label: Any) -> Any:
    if label is None:
        raise ValueError(f"rm_type {rm_type!r} needs a label (the sample's label is None)")
    return label


def _math_answer(base: str, boxed: bool, response: str) -> str | None:
    if boxed or base == "math":
        return last_boxed_content(response)
    return deepscaler_extract(response)


def _math_score(answer: str | None, label: Any, float_rounding: int | None = None) -> float:
    return 1.0 if grade_math_answer(answer, label, float_rounding) else 0.0


def score_builtin_sync(
    rm_type: str,
    response: str,
    label: Any,
    metadata: Mapping[str, Any],
    tokens: list[int],
    math_float_rounding: int | None = None,
) -> RewardValue:
    """Score one response with a local (not ``remote_rm``) built-in type. Pure and picklable,
    so it runs the same inline, on a thread or in a worker process. ``math_float_rounding`` is
    ``Config.math_float_rounding`` (None: exact, as Miles)."""
    base, boxed = _base(check_rm_type(rm_type))
    boxed_answer = last_boxed_content(response) if boxed else None
    if base in CPU_HEAVY_RM_TYPES:
        return _math_score(_math_answer(base, boxed, response), label, math_float_rounding)
    if base == "dapo":
        answer = boxed_answer if boxed else dapo_extract(response)
        return dapo_score_answer(answer, _need_label(rm_type, label))
    if base == "random":
        return random_reward()
    text = boxed_answer if boxed else response
    if base == "deterministic_random":
        return deterministic_random_reward(tokens, text or "")
    if text is None:
        return 0.0  # boxed_ type and no box: no answer to grade
    if base == "f1":
        return f1_reward(text, str(_need_label(rm_type, label)))
    if base == "gpqa":
        return gpqa_reward(text, label, metadata)
    if base == "ifbench":
        return ifbench_reward(text, metadata)
    raise RewardConfigError(f"rm_type {rm_type!r} is not a local type (remote_rm is scored over HTTP)")


async def compute_builtin_reward(args: Config, sample: Sample) -> RewardValue:
    """Score ``sample`` with its built-in rm type; a :class:`~miles_sdk.hooks.RewardFn`.

    math and deepscaler grade in the reward worker pool (``reward_num_workers``; 0 = a thread)
    when sympy is needed, so it never blocks the event loop; remote_rm goes over HTTP; the rest
    run inline.
    """
    rm_type = resolve_rm_type(args, sample)
    base, boxed = _base(rm_type)
    if base == "remote_rm":
        response = (last_boxed_content(sample.response) or "") if boxed else None
        return await remote_rm(args, sample, response)
    metadata = sample.metadata if isinstance(sample.metadata, dict) else {}
    if base in CPU_HEAVY_RM_TYPES:
        answer = _math_answer(base, boxed, sample.response)
        # Most answers are settled by the string rules in microseconds; only those needing
        # sympy pay the trip to a worker.
        verdict = quick_math_verdict(answer, sample.label)
        if verdict is not None:
            return 1.0 if verdict else 0.0
        label = None if sample.label is None else str(sample.label)
        rounding = args.math_float_rounding
        return await run_cpu_bound(
            args.reward_num_workers, _math_score, answer, label, rounding, timeout=args.reward_pool_timeout
        )
    return score_builtin_sync(rm_type, sample.response, sample.label, metadata, sample.tokens)
