"""Batching helpers shared by the actor and the critic: padding, packing, chunking, micro-batch slicing."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from miles_sdk.algo._device import Rows, host_to_device
from miles_sdk.stages import MicroBatch, TrainBatch

__all__ = [
    "PackedTokens",
    "SequenceRows",
    "chunks",
    "chunks_of",
    "host_to_device",
    "micro_batch",
    "micro_batches",
    "pack_tokens",
    "pad_tokens",
    "to_device_rows",
    "token_budget_chunks",
]

def pad_tokens(tokens: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(input_ids [B, T], attention_mask [B, T])``, built on the host
    and moved in one copy each."""
    width = max(len(t) for t in tokens)
    input_ids = torch.tensor([seq + [0] * (width - len(seq)) for seq in tokens], dtype=torch.long)
    attention_mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in tokens], dtype=torch.long)
    return host_to_device(input_ids, device), host_to_device(attention_mask, device)


class PackedTokens(NamedTuple):
    """Sequences concatenated without padding (the THD layout of flash attention's varlen kernels)."""

    input_ids: torch.Tensor
    """[1, total] token ids."""
    position_ids: torch.Tensor
    """[1, total]: 0..len-1 within each sequence, so RoPE sees each sequence from its start."""
    cu_seqlens: torch.Tensor
    """[B + 1] int32 sequence boundaries."""
    max_length: int
    starts: list[int]
    """Offset of each sequence's first token in the packed rows."""


def pack_tokens(tokens: list[list[int]], device: torch.device) -> PackedTokens:
    lengths = [len(t) for t in tokens]
    bounds = list(itertools.accumulate(lengths, initial=0))
    flat = [t for seq in tokens for t in seq]
    positions = [p for n in lengths for p in range(n)]
    return PackedTokens(
        input_ids=host_to_device(torch.tensor([flat], dtype=torch.long), device),
        position_ids=host_to_device(torch.tensor([positions], dtype=torch.long), device),
        cu_seqlens=host_to_device(torch.tensor(bounds, dtype=torch.int32), device),
        max_length=max(lengths),
        starts=bounds[:-1],
    )


class SequenceRows(NamedTuple):
    """Per-token rows of a batch of sequences, padded or packed alike: sequence ``i``'s token ``t``
    is ``flat[starts[i] + t]``. Every caller slices through here, so the two layouts share one
    indexing rule."""

    flat: torch.Tensor
    starts: list[int]

    @classmethod
    def padded(cls, batch: torch.Tensor) -> SequenceRows:
        """From a right-padded ``[B, T, ...]`` batch (a view, no copy)."""
        width = batch.shape[1]
        return cls(
            batch.reshape(batch.shape[0] * width, *batch.shape[2:]),
            [i * width for i in range(batch.shape[0])],
        )

    def rows(self, i: int, start: int, stop: int) -> torch.Tensor:
        return self.flat[self.starts[i] + start : self.starts[i] + stop]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SequenceRows:
        """``fn`` applied row-wise (e.g. a head), same layout."""
        return SequenceRows(fn(self.flat), self.starts)

    def scoring_rows(self, lengths: list[int], response_lengths: list[int]) -> list[torch.Tensor]:
        """Per sequence, the rows that predict its response: position t predicts token t+1, so
        the response tokens [L-R, L) are scored at [L-R-1, L-1)."""
        return [self.rows(i, n - r - 1, n - 1) for i, (n, r) in enumerate(zip(lengths, response_lengths))]

    def all_scoring_rows(self, lengths: list[int], response_lengths: list[int]) -> torch.Tensor:
        """:meth:`scoring_rows` concatenated, in one gather: its backward is one scatter, where
        per-sequence slices each zero-filled a gradient of the whole batch (two kernels per
        sequence, quadratic in the micro-batch)."""
        begins = [s + n - r - 1 for s, n, r in zip(self.starts, lengths, response_lengths, strict=True)]
        return self.flat.index_select(0, _runs_index(begins, response_lengths, self.flat.device))

    def all_rows(self, lengths: list[int]) -> torch.Tensor:
        """Every sequence's rows ``[0, len)``, concatenated in one gather (no padding rows)."""
        return self.flat.index_select(0, _runs_index(self.starts[: len(lengths)], lengths, self.flat.device))


def _runs_index(begins: Sequence[int], counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[b, b+1, ..., b+c-1 for b, c in zip(begins, counts)]`` as a device index, built with
    tensor ops (a Python list would be one element per token) and copied once."""
    # numpy, not torch, on the host: torch's CPU repeat_interleave and arange hand these few
    # thousand elements to its thread pool (0.2-1 ms a call on a many-core host, 4 us here).
    counts_a = np.asarray(counts, dtype=np.int64)
    shift = np.asarray(begins, dtype=np.int64) - (np.cumsum(counts_a) - counts_a)
    index = np.arange(int(counts_a.sum()), dtype=np.int64) + np.repeat(shift, counts_a)
    return host_to_device(torch.from_numpy(index), device)


def chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(start + size, n)))


def chunks_of(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def token_budget_chunks(items: list[int], lengths: list[int], max_tokens: int) -> Iterator[list[int]]:
    """Consecutive groups of ``items`` whose summed ``lengths`` stay within ``max_tokens``
    (Miles's ``use_dynamic_batch_size``); a sequence longer than the budget gets a group alone."""
    group: list[int] = []
    used = 0
    for i in items:
        if group and used + lengths[i] > max_tokens:
            yield group
            group, used = [], 0
        group.append(i)
        used += lengths[i]
    if group:
        yield group


def micro_batches(
    data: TrainBatch, step_idx: list[int], *, micro_batch_size: int, max_tokens: int | None
) -> Iterator[list[int]]:
    """Micro-batches of one optimizer step: by token budget when ``max_tokens`` is set, else by count."""
    if max_tokens is None:
        return chunks_of(step_idx, micro_batch_size)
    lengths = [len(t) for t in data.tokens]
    return token_budget_chunks(step_idx, lengths, max_tokens)


def _host_flat(rows: list[Any], dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """Host sequences (lists or CPU tensors) joined into one host tensor, and each one's size."""
    if all(isinstance(r, list) for r in rows):
        # One tensor from the joined lists: a tensor per row cost a few host ops each.
        sizes = [len(r) for r in rows]
        return torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=dtype), sizes
    flat = [torch.as_tensor(r, dtype=dtype).reshape(-1) for r in rows]
    return torch.cat(flat), [t.numel() for t in flat]


def to_device_rows(rows: list[Any], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Host sequences (lists or CPU tensors) as device tensors, in one copy that does not wait.

    A blocking host-to-device copy from pageable memory synchronises the stream: per sample and
    per key that was a host stall each; here all rows go through one pinned buffer, copied with
    ``non_blocking`` (the host allocator keeps the buffer until the copy is done)."""
    if not rows:
        return []
    host, sizes = _host_flat(rows, dtype)
    return Rows(host_to_device(host, device), sizes)


def _float_keys_to_device(
    keyed: dict[str, list[Any]], device: torch.device
) -> dict[str, list[torch.Tensor]]:
    """Several float32 keys' rows in ONE pinned host-to-device copy (a copy per key was a pin
    and a launch each, per micro-batch), each key's rows views of its part of the buffer."""
    parts = {key: _host_flat(rows, torch.float32) for key, rows in keyed.items() if rows}
    out: dict[str, list[torch.Tensor]] = {key: [] for key in keyed}
    if not parts:
        return out
    on_device = host_to_device(torch.cat([host for host, _ in parts.values()]), device)
    offset = 0
    for key, (host, sizes) in parts.items():
        out[key] = Rows(on_device[offset : offset + host.numel()], sizes)
        offset += host.numel()
    return out


def micro_batch(data: TrainBatch, idx: list[int], device: torch.device) -> MicroBatch:
    """Slice the rollout data to ``idx``; per-sample tensors move to ``device`` (one copy for
    the token ids, one for every float key)."""
    tokens = [data.tokens[i] for i in idx]
    optional = {
        "log_probs": data.log_probs,
        "ref_log_probs": data.ref_log_probs,
        "rollout_log_probs": data.rollout_log_probs,
        "advantages": data.advantages,
        "returns": data.returns,
        "values": data.values,
    }
    present = {key: values for key, values in optional.items() if values is not None}
    keyed: dict[str, list[Any]] = {key: [values[i] for i in idx] for key, values in present.items()}
    keyed["loss_masks"] = [data.loss_masks[i] for i in idx]
    rows = _float_keys_to_device(keyed, device)

    def key_rows(key: str) -> list[torch.Tensor] | None:
        return rows[key] if key in present else None

    return MicroBatch(
        tokens=to_device_rows(tokens, torch.long, device),
        token_lists=tokens,
        response_lengths=[data.response_lengths[i] for i in idx],
        total_lengths=[len(t) for t in tokens],
        loss_masks=rows["loss_masks"],
        rewards=[data.rewards[i] for i in idx],
        sample_indices=[data.sample_indices[i] for i in idx],
        log_probs=key_rows("log_probs"),
        ref_log_probs=key_rows("ref_log_probs"),
        rollout_log_probs=key_rows("rollout_log_probs"),
        advantages=key_rows("advantages"),
        returns=key_rows("returns"),
        values=key_rows("values"),
    )
