"""The hypothesis strategies draw consistent data and do reach the edge cases."""

from __future__ import annotations

import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

from miles_sdk.testing.strategies import (
    MaskedTokenBatch,
    batches,
    groups,
    masked_token_tensors,
    samples,
    train_data,
)
from miles_sdk.testing.tiny import tiny_tokenizer
from miles_sdk.types import Sample, TrainData

TOK = tiny_tokenizer()
FAST = settings(max_examples=25, deadline=None)


@FAST
@given(samples())
def test_samples_are_valid_and_decode_to_prompt_plus_response(s: Sample) -> None:
    s.validate()
    assert isinstance(s.prompt, str)
    assert TOK.decode(s.tokens) == s.prompt + s.response
    assert TOK.decode(s.response_tokens) == s.response
    assert s.response_length >= 1
    assert s.reward is not None and -1.0 <= s.get_reward_value() <= 1.0


@FAST
@given(groups(3, group_index=2))
def test_groups_share_prompt_and_number_consecutively(g: list[Sample]) -> None:
    assert len(g) == 3
    assert len({str(s.prompt) for s in g}) == 1
    assert [s.index for s in g] == [6, 7, 8]
    assert {s.group_index for s in g} == {2}


@FAST
@given(batches())
def test_batches_have_equal_group_sizes_and_unique_indices(b: list[list[Sample]]) -> None:
    assert len({len(g) for g in b}) == 1
    indices = [s.index for g in b for s in g]
    assert indices == list(range(len(indices)))


@FAST
@given(train_data())
def test_train_data_lists_agree(d: TrainData) -> None:
    k = len(d["tokens"])
    for key in ("response_lengths", "rewards", "raw_reward", "truncated", "sample_indices", "loss_masks"):
        assert len(d[key]) == k, key
    for toks, n, mask, lp in zip(
        d["tokens"], d["response_lengths"], d["loss_masks"], d["rollout_log_probs"], strict=True
    ):
        assert 1 <= n <= len(toks)
        assert len(mask) == n and len(lp) == n
        assert set(mask) <= {0, 1}


@FAST
@given(masked_token_tensors(extra_fields=("old_log_probs",)))
def test_masked_token_batch_layout(b: MaskedTokenBatch) -> None:
    for v, m, n, t, old in zip(
        b.values, b.loss_masks, b.response_lengths, b.total_lengths, b.extra["old_log_probs"], strict=True
    ):
        assert v.shape == m.shape == old.shape == (n,)
        assert t > n
        assert set(m.tolist()) <= {0.0, 1.0}
        assert torch.isfinite(v).all()
    assert b.flat_values.shape == (sum(b.response_lengths),)
    assert b.flat_masks.shape == b.flat_values.shape


def test_edge_cases_are_reachable() -> None:
    settings_ = settings(max_examples=100, deadline=None, database=None)
    all_masked = find(
        masked_token_tensors(), lambda b: any(m.sum() == 0 for m in b.loss_masks), settings=settings_
    )
    assert any(m.sum() == 0 for m in all_masked.loss_masks)
    single = find(masked_token_tensors(), lambda b: 1 in b.response_lengths, settings=settings_)
    assert 1 in single.response_lengths
    unscored = find(samples(scored=False), lambda s: True, settings=settings_)
    assert unscored.reward is None


@FAST
@given(masked_token_tensors(batch_size=st.just(2), min_len=3, max_len=3, dtype=torch.float64))
def test_masked_token_tensors_honours_shape_arguments(b: MaskedTokenBatch) -> None:
    assert b.response_lengths == [3, 3]
    assert all(v.dtype == torch.float64 for v in b.values)
