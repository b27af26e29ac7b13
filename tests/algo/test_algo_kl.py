"""KL estimators: hand-computed values, k3 >= 0, clamps and the importance ratio."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import compute_approx_kl

LP = torch.tensor([-1.0, -2.0, -0.5])
REF = torch.tensor([-1.5, -1.0, -0.5])
D = [0.5, -1.0, 0.0]


def test_k1_k2_k3_by_hand() -> None:
    assert compute_approx_kl(LP, REF, "k1").tolist() == pytest.approx(D)
    assert compute_approx_kl(LP, REF, "k2").tolist() == pytest.approx([d * d / 2 for d in D])
    k3 = [math.exp(-d) - 1 + d for d in D]
    assert compute_approx_kl(LP, REF, "k3").tolist() == pytest.approx(k3)
    assert compute_approx_kl(LP, REF, "low_var_kl").tolist() == pytest.approx(k3)


def test_low_var_kl_clamps() -> None:
    lp = torch.tensor([0.0, 0.0, 0.0])
    ref = torch.tensor([30.0, 5.0, -30.0])  # d = -30, -5, 30
    out = compute_approx_kl(lp, ref, "low_var_kl").tolist()
    # d=-30: -d clamped to 20, exp(20)-21 -> 10; d=-5: exp(5)-6=142.4 -> 10; d=30: -d clamped to -20,
    # exp(-20)+19 -> 10. Every entry hits the +10 result clamp, and none overflows.
    assert out == pytest.approx([10.0, 10.0, 10.0])
    small = compute_approx_kl(torch.tensor([0.0]), torch.tensor([2.0]), "low_var_kl")
    assert small.item() == pytest.approx(math.exp(2) - 3, rel=1e-6)  # inside both clamps
    k3 = compute_approx_kl(lp, ref, "k3")
    assert k3[1].item() == pytest.approx(math.exp(5) - 6, rel=1e-5)


def test_importance_ratio_multiplies() -> None:
    ratio = torch.tensor([2.0, 0.5, 1.0])
    out = compute_approx_kl(LP, REF, "k2", importance_ratio=ratio)
    assert out.tolist() == pytest.approx([2 * 0.125, 0.5 * 0.5, 0.0])


def test_low_precision_computes_in_fp32_and_fp64_stays() -> None:
    assert compute_approx_kl(LP.bfloat16(), REF.bfloat16(), "k3").dtype == torch.float32
    assert compute_approx_kl(LP.double(), REF.double(), "k1").dtype == torch.float64


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown kl_loss_type 'k9'"):
        compute_approx_kl(LP, REF, "k9")
    with pytest.raises(ValueError, match="differ in shape"):
        compute_approx_kl(LP, REF[:2], "k1")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(-15, 0), st.floats(-15, 0)), min_size=1, max_size=20))
def test_k3_and_k2_are_non_negative(pairs: list[tuple[float, float]]) -> None:
    lp = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    ref = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    for kind in ("k2", "k3", "low_var_kl"):
        assert bool((compute_approx_kl(lp, ref, kind) >= 0).all())
    assert bool((compute_approx_kl(lp, ref, "low_var_kl") <= 10).all())


def test_k3_gradcheck() -> None:
    lp = torch.tensor([-1.0, -0.2, -3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.3, -0.1, -2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: compute_approx_kl(x, ref, "k3"), (lp,))
    assert torch.autograd.gradcheck(lambda x: compute_approx_kl(x, ref, "low_var_kl"), (lp,))
