"""Batching helpers shared by the actor and the critic: padding, chunking, micro-batch slicing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["chunks", "chunks_of", "micro_batch", "micro_batches", "pad_tokens", "token_budget_chunks"]

# Keys of the rollout data that are per-sample tensors, sliced into micro-batches.
PER_SAMPLE_TENSOR_KEYS = (
    "log_probs",
    "ref_log_probs",
    "rollout_log_probs",
    "advantages",
    "returns",
    "values",
)


def pad_tokens(tokens: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(input_ids [B, T], attention_mask [B, T])``."""
    width = max(len(t) for t in tokens)
    input_ids = torch.zeros(len(tokens), width, dtype=torch.long, device=device)
    attention_mask = torch.zeros(len(tokens), width, dtype=torch.long, device=device)
    for i, seq in enumerate(tokens):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    return input_ids, attention_mask


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
    data: dict[str, Any], step_idx: list[int], *, micro_batch_size: int, max_tokens: int | None
) -> Iterator[list[int]]:
    """Micro-batches of one optimizer step: by token budget when ``max_tokens`` is set, else by count."""
    if max_tokens is None:
        return chunks_of(step_idx, micro_batch_size)
    lengths = [len(t) for t in data["tokens"]]
    return token_budget_chunks(step_idx, lengths, max_tokens)


def micro_batch(data: dict[str, Any], idx: list[int], device: torch.device) -> dict[str, Any]:
    """Slice the rollout data to ``idx``; per-sample tensors move to ``device``."""
    tokens = [data["tokens"][i] for i in idx]
    response_lengths = [data["response_lengths"][i] for i in idx]
    batch: dict[str, Any] = {
        "unconcat_tokens_list": tokens,
        "unconcat_tokens": [torch.tensor(t, device=device) for t in tokens],
        "tokens": [torch.tensor(t, device=device) for t in tokens],
        "response_lengths": response_lengths,
        "total_lengths": [len(t) for t in tokens],
        "loss_masks": [
            torch.as_tensor(data["loss_masks"][i], dtype=torch.float32, device=device) for i in idx
        ],
        "rewards": [data["rewards"][i] for i in idx],
        "sample_indices": [data["sample_indices"][i] for i in idx],
    }
    for key in PER_SAMPLE_TENSOR_KEYS:
        values = data.get(key)
        if values is None:
            batch[key] = None
            continue
        batch[key] = [torch.as_tensor(values[i], dtype=torch.float32).to(device) for i in idx]
    return batch
