"""Shim of ``miles.rollout.filter_hub.base_types``: ``DynamicFilterOutput``, ``call_dynamic_filter``,
``MetricGatherer``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from miles_sdk.types import DynamicFilterOutput

__all__ = ["DynamicFilterOutput", "MetricGatherer", "call_dynamic_filter"]


def call_dynamic_filter(fn: Any, *args: Any, **kwargs: Any) -> DynamicFilterOutput:
    """Call a dynamic filter as Miles does: None keeps everything, a bare bool becomes
    ``DynamicFilterOutput(keep=bool)``."""
    if fn is None:
        return DynamicFilterOutput(keep=True)
    output = fn(*args, **kwargs)
    if isinstance(output, DynamicFilterOutput):
        return output
    return DynamicFilterOutput(keep=bool(output))


class MetricGatherer:
    """Counts dynamic-filter drops by reason, as ``rollout/dynamic_filter/drop_{reason}`` metrics."""

    def __init__(self) -> None:
        self._drops: Counter[str] = Counter()

    def on_dynamic_filter_drop(self, reason: str | None) -> None:
        """Count one dropped group; a drop without a reason is not counted (as in Miles)."""
        if reason:
            self._drops[reason] += 1

    def collect(self) -> dict[str, int]:
        """The drop counts as metrics."""
        return {f"rollout/dynamic_filter/drop_{reason}": count for reason, count in self._drops.items()}
