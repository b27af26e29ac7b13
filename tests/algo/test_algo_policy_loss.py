"""Policy, value and SFT losses: hand cases, ratio-1 property, float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import (
    compute_policy_loss,
    compute_sft_loss,
    compute_value_loss,
    get_mean_of_sample_mean,
    gspo_sequence_kl,
    policy_ratio_metrics,
)

T = torch.tensor


def _kl(ratios: list[float]) -> torch.Tensor:
    return T([-math.log(r) for r in ratios], dtype=torch.float64)  # ppo_kl = old - new = -log ratio


def test_clip_cases_by_hand() -> None:
    ppo_kl = _kl([1.0, 1.5, 0.5, 1.25])
    adv = T([2.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    pg, clipfrac = compute_policy_loss(ppo_kl, adv, 0.2, 0.28)
    assert pg.tolist() == pytest.approx([-2.0, -1.28, 0.8, -1.25])
    assert clipfrac.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_dual_clip_bounds_negative_advantages() -> None:
    pg, _ = compute_policy_loss(
        _kl([5.0, 5.0]), T([-1.0, 1.0], dtype=torch.float64), 0.2, 0.2, eps_clip_c=3.0
    )
    # A<0: max(5, 1.2) = 5 then min(5, 3) = 3; A>0 untouched: max(-5, -1.2) = -1.2
    assert pg.tolist() == pytest.approx([3.0, -1.2])
    with pytest.raises(ValueError, match="eps_clip_c must be > 1"):
        compute_policy_loss(_kl([1.0]), T([1.0], dtype=torch.float64), 0.2, 0.2, eps_clip_c=1.0)


def test_log_ratio_is_clamped() -> None:
    pg, _ = compute_policy_loss(T([-100.0, 100.0]), T([-1.0, 1.0]), 0.2, 0.2)
    # ratio clamps to exp(20) and exp(-20); A>0 with a tiny ratio keeps the (pessimistic) unclipped term
    assert pg.tolist() == pytest.approx([math.exp(20), -math.exp(-20)], rel=1e-5)
    assert bool(torch.isfinite(pg).all())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=20), st.floats(0, 0.9), st.floats(0, 2))
def test_ratio_one_gives_unclipped_loss(adv: list[float], eps: float, eps_high: float) -> None:
    a = T(adv, dtype=torch.float64)
    pg, clipfrac = compute_policy_loss(torch.zeros_like(a), a, eps, eps_high)
    assert pg.tolist() == pytest.approx((-a).tolist())
    assert clipfrac.sum().item() == 0.0


def test_policy_loss_gradcheck_wrt_log_probs() -> None:
    old = T([-1.0, -0.5, -2.0, -0.1], dtype=torch.float64)
    adv = T([1.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    # keep ratios away from the clip kinks where the loss is not differentiable
    new = (old + T([0.05, -0.02, 0.6, -0.7], dtype=torch.float64)).requires_grad_(True)

    def f(lp: torch.Tensor) -> torch.Tensor:
        return compute_policy_loss(old - lp, adv, 0.2, 0.3, eps_clip_c=3.0)[0]

    assert torch.autograd.gradcheck(f, (new,))


def test_gspo_sequence_kl_by_hand() -> None:
    lps = [T([-1.0, -2.0, -7.0]), T([-1.0])]
    old = [T([-1.5, -1.0, 0.0]), T([-1.0])]
    masks = [T([1.0, 1.0, 0.0]), T([1.0])]
    assert gspo_sequence_kl(lps, old, masks).tolist() == pytest.approx([0.25, 0.25, 0.25, 0.0])
    with pytest.raises(ValueError, match="sample 1"):
        gspo_sequence_kl(lps, [old[0], T([1.0, 2.0])], masks)


def test_gspo_gradcheck() -> None:
    old = [T([-1.5, -1.0], dtype=torch.float64)]
    masks = [T([1.0, 1.0], dtype=torch.float64)]
    lp = T([-1.4, -1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gspo_sequence_kl([x], old, masks), (lp,))


def test_ratio_metrics() -> None:
    ppo_kl = _kl([0.5, 1.5, 1.0, 2.0])
    adv = T([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    mask = T([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    reducer = get_mean_of_sample_mean([4], [4], [mask])
    m = policy_ratio_metrics(ppo_kl, adv, mask, 0.2, 0.2, reducer)
    assert m["pg_clipfrac_low"].item() == pytest.approx(1 / 3)
    assert m["pg_clipfrac_high"].item() == pytest.approx(1 / 3)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert m["ratio_max"].item() == pytest.approx(1.5)  # the masked 2.0 is ignored
    k3 = [r - 1 - math.log(r) for r in (0.5, 1.5, 1.0)]
    assert m["approx_kl"].item() == pytest.approx(sum(k3) / 3)


def test_value_loss_by_hand() -> None:
    loss, clipfrac = compute_value_loss(T([0.5, 0.1]), T([0.0, 0.0]), T([1.0, -1.0]), 0.2)
    # token 0: clipped .2 -> (.2-1)^2=.64 vs .25 -> .64; token 1: inside clip -> (1.1)^2
    assert loss.tolist() == pytest.approx([0.64, 1.21])
    assert clipfrac.tolist() == [1.0, 0.0]


def test_value_loss_gradcheck() -> None:
    old = T([0.0, 0.3], dtype=torch.float64)
    ret = T([1.0, -1.0], dtype=torch.float64)
    v = T([0.5, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: compute_value_loss(x, old, ret, 0.2)[0], (v,))


def test_sft_loss() -> None:
    reducer = get_mean_of_sample_mean([3, 2], [2, 1], [T([1, 1]), T([1])])
    assert compute_sft_loss(T([-1.0, -3.0, -4.0]), reducer).item() == pytest.approx((2 + 4) / 2)
