"""Reducers: hand-computed means, all-masked rows, padding invariance, masked gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import constant_divisor_reducer, get_mean_of_sample_mean, get_sum_of_sample_mean

LENS = [2, 3, 1]
MASKS = [torch.tensor([1, 1]), torch.tensor([1, 1, 1]), torch.tensor([0])]
X = torch.tensor([1.0, 1.0, 3.0, 6.0, 9.0, math.nan])


def test_sample_mean_by_hand_and_all_masked_row_is_zero() -> None:
    reduce = get_mean_of_sample_mean([5, 6, 2], LENS, MASKS)
    assert reduce(X).item() == pytest.approx((1 + 6 + 0) / 3)


def test_sum_of_sample_mean_returns_the_sum_by_default() -> None:
    # Regression (issue 14.5): the name says sum, hooks must return sums (Miles's convention), and
    # the old default averaged, so a reducer built on it got an n_samples-times smaller gradient.
    assert get_sum_of_sample_mean([5, 6, 2], LENS, MASKS)(X).item() == pytest.approx(1 + 6 + 0)
    per_token = get_sum_of_sample_mean([5, 6, 2], LENS, MASKS, calculate_per_token_loss=True)
    assert per_token(X).item() == pytest.approx(20.0)


def test_per_token_by_hand() -> None:
    reduce = get_mean_of_sample_mean([5, 6, 2], LENS, MASKS, calculate_per_token_loss=True)
    assert reduce(X).item() == pytest.approx(20 / 5)


def test_denominators_override() -> None:
    reduce = get_mean_of_sample_mean([5, 6, 2], LENS, MASKS, denominators=[4, 3, 1])
    assert reduce(X).item() == pytest.approx((2 / 4 + 18 / 3 + 0) / 3)


def test_constant_divisor_reducer_dr_grpo() -> None:
    factory = constant_divisor_reducer(10.0)
    # Miles's convention for a PGLossReducer hook: sums over samples (per token: the token sum).
    assert factory([5, 6, 2], LENS, MASKS, False)(X).item() == pytest.approx(2 / 10 + 18 / 10)
    assert factory([5, 6, 2], LENS, MASKS, True)(X).item() == pytest.approx(20.0)


def test_sum_reduction_is_miles_sum_of_sample_mean() -> None:
    from miles_sdk.algo.reducers import miles_scale

    summed = get_sum_of_sample_mean([5, 6, 2], LENS, MASKS, reduction="sum")(X).item()
    assert summed == pytest.approx(2 / 2 + 18 / 3 + 0)
    assert summed / miles_scale(MASKS) == pytest.approx(
        get_mean_of_sample_mean([5, 6, 2], LENS, MASKS)(X).item()
    )
    per_token = get_sum_of_sample_mean([5, 6, 2], LENS, MASKS, True, reduction="sum")(X).item()
    assert per_token == pytest.approx(20.0)
    assert per_token / miles_scale(MASKS, True) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="divisor must be > 0"):
        constant_divisor_reducer(0.0)


def test_shape_errors() -> None:
    reduce = get_sum_of_sample_mean([5, 6, 2], LENS, MASKS)
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        reduce(torch.zeros(5))
    with pytest.raises(ValueError, match=r"loss_masks\[1\]"):
        get_sum_of_sample_mean([1, 1], [2, 2], [torch.ones(2), torch.ones(3)])


def test_masked_positions_get_zero_gradient() -> None:
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    masks = [torch.tensor([1, 0]), torch.tensor([0, 1, 1]), torch.tensor([0])]
    torch.autograd.backward([get_mean_of_sample_mean([0, 0, 0], LENS, masks)(x)])
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx([1 / 3, 0.0, 0.0, 1 / 6, 1 / 6, 0.0])


@settings(max_examples=50, deadline=None)
@given(st.data(), st.booleans())
def test_invariant_to_padding_with_masked_tokens(data: st.DataObject, per_token: bool) -> None:
    n = data.draw(st.integers(1, 4))
    lens = data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    pads = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    vals = [
        torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=k, max_size=k)), dtype=torch.float64)
        for k in lens
    ]
    masks = [torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k))) for k in lens]
    base = get_sum_of_sample_mean(lens, lens, masks, per_token)(torch.cat(vals))
    padded_vals = [torch.cat([v, torch.full((p,), 1e6, dtype=torch.float64)]) for v, p in zip(vals, pads)]
    padded_masks = [torch.cat([m, torch.zeros(p, dtype=m.dtype)]) for m, p in zip(masks, pads)]
    plens = [k + p for k, p in zip(lens, pads)]
    padded = get_sum_of_sample_mean(plens, plens, padded_masks, per_token)(torch.cat(padded_vals))
    assert padded.item() == pytest.approx(base.item(), abs=1e-9)
    assert math.isfinite(base.item())
