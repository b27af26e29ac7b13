"""The rollout buffer: groups handed back to the data source, served before new prompts.

Groups come back through ``DataSource.add_samples`` (partial rollout returns unfinished groups;
custom rollouts may return anything). ``get_samples`` serves them first, chosen by a
:class:`~miles_sdk.hooks.BufferFilterFn`; the stock one is :func:`pop_first`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from miles_sdk.types import Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config
    from miles_sdk.hooks import BufferFilterFn

__all__ = ["BufferGroupError", "check_groups", "pop_first", "take_from_buffer"]


class BufferGroupError(ValueError):
    """Groups of the wrong shape were added to, or returned from, the buffer."""


def pop_first(
    args: Config, rollout_id: int | None, buffer: list[list[Sample]], num_samples: int
) -> list[list[Sample]]:
    """Miles's default buffer filter: take the first ``num_samples`` groups (FIFO) and remove them."""
    count = min(len(buffer), num_samples)
    taken = buffer[:count]
    del buffer[:count]
    return taken


def check_groups(groups: object, n_samples_per_prompt: int, *, what: str) -> list[list[Sample]]:
    """Check that ``groups`` is a list of groups of exactly ``n_samples_per_prompt`` Samples.

    ``what`` names the caller in the error ("add_samples", "buffer filter my.mod.fn").
    """
    if not isinstance(groups, list):
        raise BufferGroupError(
            f"{what}: expected a list of groups (list[list[Sample]]), got {type(groups).__name__}"
        )
    for i, group in enumerate(groups):
        if not isinstance(group, list):
            raise BufferGroupError(
                f"{what}: group {i} is a {type(group).__name__}, expected a list of Samples "
                "(pass list[list[Sample]], one inner list per prompt group)"
            )
        if len(group) != n_samples_per_prompt:
            raise BufferGroupError(
                f"{what}: group {i} has {len(group)} samples; every group needs exactly "
                f"n_samples_per_prompt={n_samples_per_prompt}"
            )
        for j, sample in enumerate(group):
            if not isinstance(sample, Sample):
                raise BufferGroupError(
                    f"{what}: group {i} item {j} is a {type(sample).__name__}, not a Sample"
                )
    return groups


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else qual


def take_from_buffer(
    args: Config,
    buffer: list[list[Sample]],
    buffer_filter: BufferFilterFn,
    num_samples: int,
    rollout_id: int | None = None,
) -> list[list[Sample]]:
    """Serve up to ``num_samples`` groups from ``buffer`` through ``buffer_filter``, checked.

    The filter must return at most ``num_samples`` groups of the right size and remove what it
    returns from ``buffer``; a filter that leaves them would serve the same groups forever.
    """
    if not buffer or num_samples <= 0:
        return []
    before = len(buffer)
    what = f"buffer filter {_name(buffer_filter)}"
    taken = check_groups(
        buffer_filter(args, rollout_id, buffer, num_samples), args.n_samples_per_prompt, what=what
    )
    if len(taken) > num_samples:
        raise BufferGroupError(f"{what}: returned {len(taken)} groups but only {num_samples} were asked for")
    still_there = {id(g) for g in buffer}
    if any(id(g) in still_there for g in taken) or len(buffer) > before - len(taken):
        raise BufferGroupError(
            f"{what}: it must remove the groups it returns from the buffer (see pop_first)"
        )
    return taken
