"""Shim of ``miles.backends.training_utils.cp_utils`` for context-parallel size 1.

Miles splits each packed sequence over CP ranks in a zigzag layout; a TIS/MIS hook
(``examples/.../mis.py: compute_mis_weights_with_cp``) gathers the log-probs of all CP ranks
before weighting and slices its rank's part back out. The SDK's backends do not use context
parallelism (CP size is always 1), so gather and slice are the identity, as they are in Miles
at CP size 1. ``qkv_format="bshd"`` pads to ``max_seq_len`` where Miles does. The offset helper
is exact for any CP size, so hooks that only compute layouts keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from miles_sdk.algo.reducers import get_sum_of_sample_mean as _sum_of_sample_mean
from miles_sdk.compat.miles.backends.training_utils.parallel import get_parallel_state

__all__ = [
    "all_gather_with_cp",
    "get_logits_and_tokens_offset_with_cp",
    "get_sum_of_sample_mean",
    "slice_log_prob_with_cp",
    "slice_with_cp",
]

_Span = tuple[int, int]
_LogProbs = TypeVar("_LogProbs", list[float], torch.Tensor)


def _cp_size() -> int:
    size = get_parallel_state().cp.size
    if size != 1:
        raise NotImplementedError(
            f"context parallel size {size}: the SDK's backends run without context parallelism (size 1); "
            "cp_utils gathers and slices only at CP size 1"
        )
    return size


def get_logits_and_tokens_offset_with_cp(
    total_length: int,
    response_length: int,
    qkv_format: str = "thd",
    max_seq_len: int | None = None,
    cp_rank: int | None = None,
    cp_size: int | None = None,
) -> tuple[int, tuple[_Span, _Span], tuple[_Span, _Span], tuple[_Span, _Span]]:
    """The zigzag layout of one sequence on CP rank ``cp_rank`` of ``cp_size`` (both given, or this
    process's): chunk size, the rank's two token chunks, and its logit and token spans of the response.
    """
    if cp_rank is None or cp_size is None:
        state = get_parallel_state()
        cp_rank, cp_size = state.cp.rank, state.cp.size
    if cp_size <= 1:
        raise ValueError("get_logits_and_tokens_offset_with_cp: the layout is defined for cp_size > 1")
    if qkv_format == "thd":
        padded = total_length
    elif max_seq_len is None:
        raise ValueError("get_logits_and_tokens_offset_with_cp: max_seq_len is required for qkv_format='bshd'")
    else:
        padded = max_seq_len
    chunk = -(-padded // (2 * cp_size))
    first = (cp_rank * chunk, (cp_rank + 1) * chunk)
    second = ((2 * cp_size - cp_rank - 1) * chunk, (2 * cp_size - cp_rank) * chunk)
    prompt_length = total_length - response_length

    def spans(tokens: _Span) -> tuple[_Span, _Span]:
        # Logit i predicts token i + 1; only the response's predictions are kept.
        lo, hi = max(tokens[0], prompt_length - 1), min(tokens[1], total_length - 1)
        return ((lo, hi), (lo + 1, hi + 1)) if lo < hi else ((0, 0), (0, 0))

    (logits_0, token_0), (logits_1, token_1) = spans(first), spans(second)
    return chunk, (first, second), (logits_0, logits_1), (token_0, token_1)


def all_gather_with_cp(
    tensor: torch.Tensor,
    total_length: int,
    response_length: int,
    qkv_format: str = "thd",
    max_seq_len: int | None = None,
) -> torch.Tensor:
    """The whole response's values from every CP rank; at CP size 1 this rank holds them all."""
    _cp_size()
    if tensor.shape[0] != response_length:
        raise ValueError(
            f"all_gather_with_cp: got {tensor.shape[0]} values for a response of {response_length} tokens"
        )
    return tensor


def slice_log_prob_with_cp(
    log_prob: _LogProbs,
    total_length: int,
    response_length: int,
    qkv_format: str = "thd",
    max_token_len: int | None = None,
) -> _LogProbs:
    """This CP rank's part of one response's values; at CP size 1, all of them."""
    if len(log_prob) != response_length:
        raise ValueError(
            f"slice_log_prob_with_cp: got {len(log_prob)} values for a response of {response_length} tokens"
        )
    _cp_size()
    return log_prob


def slice_with_cp(
    tokens: torch.Tensor,
    pad_value: int | float | Callable[[torch.Tensor, int], torch.Tensor],
    qkv_format: str = "thd",
    max_seq_len: int | None = None,
    parallel_state: Any = None,
) -> torch.Tensor:
    """This CP rank's tokens; at CP size 1 all of them, padded to ``max_seq_len`` for ``bshd``."""
    size = (parallel_state or get_parallel_state()).cp.size
    if size != 1:
        _cp_size()
    if qkv_format != "bshd":
        return tokens
    if max_seq_len is None:
        raise ValueError("slice_with_cp: max_seq_len is required for qkv_format='bshd'")
    pad = max_seq_len - tokens.size(0)
    if callable(pad_value):
        return pad_value(tokens, pad)
    return F.pad(tokens, (0, 0) * (tokens.dim() - 1) + (0, pad), value=pad_value)


def get_sum_of_sample_mean(
    total_lengths: Sequence[int],
    response_lengths: Sequence[int],
    loss_masks: Sequence[torch.Tensor],
    calculate_per_token_loss: bool = False,
    qkv_format: str = "thd",
    max_seq_lens: Sequence[int] | None = None,
    *,
    denominators: Sequence[float | torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Miles's reducer: the sum over samples of each sample's masked token mean (token sum with
    ``calculate_per_token_loss``; ``denominators`` replaces each sample's mask sum).
    ``qkv_format`` / ``max_seq_lens`` only matter for CP > 1."""
    _cp_size()
    return _sum_of_sample_mean(
        total_lengths, response_lengths, loss_masks, calculate_per_token_loss, denominators=denominators
    )
