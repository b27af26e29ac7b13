"""Micro-batching by count and by token budget (use_dynamic_batch_size)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from miles_sdk.backends._batching import token_budget_chunks


def test_token_budget_hand_case() -> None:
    assert list(token_budget_chunks([0, 1, 2, 3], [3, 3, 5, 1], 6)) == [[0, 1], [2, 3]]
    assert list(token_budget_chunks([0, 1], [10, 2], 6)) == [[0], [1]]  # too long alone still trains


@given(st.lists(st.integers(1, 20), min_size=1, max_size=30), st.integers(1, 40))
def test_token_budget_keeps_every_sample_once_in_order(lengths: list[int], budget: int) -> None:
    groups = list(token_budget_chunks(list(range(len(lengths))), lengths, budget))
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or sum(lengths[i] for i in g) <= budget
