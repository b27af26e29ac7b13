"""Shim of ``miles.backends.training_utils.parallel``: this process's parallel layout.

The SDK's backends shard data over ranks only (data parallel, FSDP); they have no tensor,
pipeline, expert or context parallelism, so those groups always have size 1 and rank 0. The
data-parallel group is the default ``torch.distributed`` group when one is initialised, else a
single rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["GroupInfo", "ParallelState", "get_parallel_state", "set_parallel_state"]


@dataclass(frozen=True)
class GroupInfo:
    """A process group as Miles's utilities read it: this rank, the group size and the group."""

    rank: int = 0
    size: int = 1
    group: Any = None


@dataclass(frozen=True)
class ParallelState:
    """The groups Miles's training utilities ask for; all but data parallel are trivial here."""

    dp: GroupInfo
    cp: GroupInfo = GroupInfo()
    tp: GroupInfo = GroupInfo()
    pp: GroupInfo = GroupInfo()
    ep: GroupInfo = GroupInfo()
    etp: GroupInfo = GroupInfo()
    is_pp_last_stage: bool = True

    @property
    def intra_dp(self) -> GroupInfo:
        return self.dp

    @property
    def intra_dp_cp(self) -> GroupInfo:
        return self.dp  # cp size 1: the dp x cp group is the dp group

    @property
    def dp_cp(self) -> GroupInfo:
        return self.dp


_state: ParallelState | None = None


def data_parallel_group() -> GroupInfo:
    """This process's data-parallel rank and size (the default torch.distributed group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return GroupInfo(rank=dist.get_rank(), size=dist.get_world_size(), group=dist.group.WORLD)
    return GroupInfo()


def set_parallel_state(state: ParallelState) -> None:
    """Override the state (tests; Miles's backends call it at start-up)."""
    global _state
    _state = state


def get_parallel_state() -> ParallelState:
    """The explicitly set state, else one read from torch.distributed now."""
    return _state if _state is not None else ParallelState(dp=data_parallel_group())
