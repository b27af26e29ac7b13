"""Stock dynamic-sampling filters (Miles's ``filter_hub.dynamic_sampling_filters``) and the adapter
that turns any filter's result into a :class:`DynamicFilterOutput`.

Use one with ``Trainer(dynamic_sampling_filter=check_reward_nonzero_std)`` or
``--dynamic-sampling-filter-path miles_sdk.rollout.filters.check_reward_nonzero_std``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from miles_sdk.config import Config
from miles_sdk.hooks import DynamicSamplingFilterFn
from miles_sdk.types import DynamicFilterOutput, Sample

__all__ = ["call_dynamic_filter", "check_no_aborted", "check_reward_nonzero_std"]

_STD_EPS = 1e-8


def check_reward_nonzero_std(args: Config, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """Keep a group whose rewards are not all equal (std > 1e-8): DAPO's dynamic sampling.

    A group whose rewards are all equal has zero GRPO advantage and teaches nothing. The drop
    reason is ``zero_std_{reward rounded to 0.1}``, as in Miles. Samples without a reward
    (FAILED) are left out of the std; a group with none scored is dropped as ``no_reward``.
    """
    rewards = [s.get_reward_value(args.reward_key) for s in samples if s.reward is not None]
    if not rewards:
        return DynamicFilterOutput(keep=False, reason="no_reward")
    std = _std(rewards)
    if std > _STD_EPS:
        return DynamicFilterOutput(keep=True)
    return DynamicFilterOutput(keep=False, reason=f"zero_std_{round(rewards[0], 1)}")


def check_no_aborted(args: Config, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """Drop a group with any ABORTED sample (env timeout, crashed tool): reason ``group_has_aborted``."""
    if any(s.status is Sample.Status.ABORTED for s in samples):
        return DynamicFilterOutput(keep=False, reason="group_has_aborted")
    return DynamicFilterOutput(keep=True)


def _std(values: list[float]) -> float:
    """Unbiased std as torch.std computes it (Miles's filter uses torch); 0 for one value."""
    if len(values) < 2:
        # torch gives NaN for one value, and NaN > eps is False: a lone sample is dropped.
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


async def call_dynamic_filter(
    fn: DynamicSamplingFilterFn | Callable[[Config, list[Sample]], object] | None,
    args: Config,
    group: list[Sample],
) -> DynamicFilterOutput:
    """Run ``fn`` on a finished group and normalise its verdict.

    No filter keeps everything. A bare bool (legacy Miles filters) or any object with ``keep`` /
    ``reason`` attributes is accepted; ``keep`` may be a numpy or torch bool. An async filter is
    awaited.
    """
    if fn is None:
        return DynamicFilterOutput(keep=True)
    out: object = fn(args, group)
    if inspect.isawaitable(out):
        out = await out
    if isinstance(out, DynamicFilterOutput):
        return DynamicFilterOutput(keep=bool(out.keep), reason=out.reason)
    if hasattr(out, "keep"):
        reason = getattr(out, "reason", None)
        return DynamicFilterOutput(keep=bool(out.keep), reason=None if reason is None else str(reason))
    try:
        return DynamicFilterOutput(keep=bool(out))
    except Exception as exc:  # e.g. a multi-element tensor: ambiguous truth value
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"dynamic_sampling_filter {name} returned {type(out).__name__}; expected DynamicFilterOutput or bool"
        ) from exc
