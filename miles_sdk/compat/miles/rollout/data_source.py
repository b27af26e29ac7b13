"""Shim of ``miles.rollout.data_source``.

``DataSource`` is Miles's abstract base class, for user data sources that subclass it; an instance
satisfies miles_sdk's ``DataSource`` Protocol. ``RolloutDataSource`` / ``RolloutDataSourceWithBuffer``
are miles_sdk's (built from ``args`` alone, as ``--data-source-path`` does; unlike Miles the buffer
is saved with checkpoints, see docs/data.md). ``pop_first`` is the stock buffer filter.
"""

from __future__ import annotations

import abc

from miles_sdk.data import RolloutDataSource, RolloutDataSourceWithBuffer, pop_first
from miles_sdk.types import Sample

__all__ = ["DataSource", "RolloutDataSource", "RolloutDataSourceWithBuffer", "pop_first"]


class DataSource(abc.ABC):
    """Base class of a Miles data source: groups of samples in, returned groups back."""

    @abc.abstractmethod
    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        """``num_samples`` groups of ``n_samples_per_prompt`` samples."""

    @abc.abstractmethod
    def add_samples(self, samples: list[list[Sample]]) -> None:
        """Take groups back (partial rollout)."""

    @abc.abstractmethod
    def save(self, rollout_id: int) -> None:
        """Persist the state for ``rollout_id``."""

    @abc.abstractmethod
    def load(self, rollout_id: int | None = None) -> None:
        """Restore the state saved for ``rollout_id`` (latest when None)."""

    def get_buffer_length(self) -> int | None:
        """Groups waiting in the buffer; None when the source has no buffer."""
        return None
