"""Moving small host tensors to the device without stalling the stream, and per-sample rows
that can be joined again for free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Rows", "detach_rows", "host_to_device", "join_rows"]


def host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device``. A blocking copy from pageable memory waits for the GPU to drain,
    so a few small copies per micro-batch serialised the whole step; this one goes through
    pinned memory with ``non_blocking`` (the caching host allocator keeps the pinned buffer
    alive until the copy is done)."""
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class Rows(list[torch.Tensor]):
    """Per-sample rows that are consecutive slices of one flat tensor, ``joined``.

    Hooks see a plain list of per-sample tensors (Miles's signatures), but the loss and the
    reducers flatten those lists again: a ``torch.cat`` over the rows plus a ``.to`` per row,
    i.e. host work per sample on every micro-batch. :func:`join_rows` hands back ``joined``
    instead, as long as the list still holds the very tensors it was split into (a hook that
    replaces or appends rows gets the concatenation of what it left). Pickles and copies as a
    plain list."""

    def __init__(self, joined: torch.Tensor, sizes: Sequence[int]) -> None:
        self.sizes = [int(s) for s in sizes]
        super().__init__(torch.split(joined, self.sizes))
        self.joined = joined
        self._parts = tuple(self)

    def intact(self) -> bool:
        """Whether the list still holds exactly the rows of ``joined``, in order."""
        return len(self) == len(self._parts) and all(a is b for a, b in zip(self, self._parts, strict=True))

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def join_rows(
    rows: Sequence[torch.Tensor], *, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """The rows flattened and concatenated (on ``device``, as ``dtype`` when given): free for
    intact :class:`Rows` already there, else one ``cat``."""
    if isinstance(rows, Rows) and rows.intact():
        flat = rows.joined.reshape(-1)
    elif not rows:
        return torch.zeros(0, dtype=dtype or torch.float32, device=device)
    else:
        flat = torch.cat([r.to(device=device if device is not None else r.device).reshape(-1) for r in rows])
    return flat.to(device=device if device is not None else flat.device, dtype=dtype or flat.dtype)


def detach_rows(rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[r.detach() for r in rows]``, keeping the rows joinable when they were."""
    if isinstance(rows, Rows) and rows.intact():
        return Rows(rows.joined.detach(), rows.sizes)
    return [r.detach() for r in rows]
