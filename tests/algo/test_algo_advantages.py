"""Advantage estimators: hand-computed cases, a reference GAE loop, and whitening."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import (
    advantage_params,
    compute_advantages_and_returns,
    normalize_advantages,
    reverse_discounted_cumsum,
)
from miles_sdk.config import Config

T = torch.tensor


def _run(
    args: Config,
    rewards: list[float],
    lps: list[torch.Tensor],
    refs: list[torch.Tensor] | None,
    masks: list[torch.Tensor],
    values: list[torch.Tensor] | None = None,
) -> tuple[list[list[float]], list[list[float]]]:
    adv, ret = compute_advantages_and_returns(
        params=advantage_params(args), rewards=rewards, log_probs=lps, ref_log_probs=refs, loss_masks=masks, values=values
    )
    return [a.tolist() for a in adv], [r.tolist() for r in ret]


def test_grpo_broadcasts_reward() -> None:
    adv, ret = _run(
        Config(), [0.5, -1.0], [torch.zeros(3), torch.zeros(2)], None, [torch.ones(3), torch.ones(2)]
    )
    assert adv == [[0.5] * 3, [-1.0] * 2]
    assert ret == adv


def test_reinforce_plus_plus_by_hand() -> None:
    args = Config(advantage_estimator="reinforce_plus_plus", kl_coef=0.1, gamma=0.5)
    lp, ref, mask = T([-1.0, -1.0, -1.0]), T([-2.0, -1.0, -1.5]), T([1, 1, 0])
    # k1 kl = [1, 0, .5]; token rewards [-.1, 0 + 1 (last trainable), -.05]
    adv, ret = _run(args, [1.0], [lp], [ref], [mask])
    assert adv[0] == pytest.approx([0.3875, 0.975, -0.05])
    assert ret == adv


def test_reinforce_plus_plus_fully_masked_sample_gets_no_reward() -> None:
    args = Config(advantage_estimator="reinforce_plus_plus")
    adv, _ = _run(args, [5.0], [torch.zeros(2)], None, [torch.zeros(2)])
    assert adv == [[0.0, 0.0]]


def test_reinforce_plus_plus_baseline_by_hand() -> None:
    args = Config(advantage_estimator="reinforce_plus_plus_baseline", kl_coef=0.1)
    adv, _ = _run(args, [0.5], [T([-1.0, -1.0, -1.0])], [T([-2.0, -1.0, -1.5])], [torch.ones(3)])
    assert adv[0] == pytest.approx([0.4, 0.5, 0.45])


def test_ppo_gae_skips_masked_tokens_by_hand() -> None:
    args = Config(advantage_estimator="ppo", gamma=0.9, lambd=0.8)
    values = [T([0.5, 0.2, 9.0, 0.1])]
    adv, ret = _run(args, [1.0], [torch.zeros(4)], None, [T([1, 1, 0, 1])], values)
    assert adv[0] == pytest.approx([0.06736, 0.538, 0.0, 0.9])
    assert ret[0] == pytest.approx([0.56736, 0.738, 0.0, 1.0])


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="needs values"):
        _run(Config(advantage_estimator="ppo"), [1.0], [torch.zeros(2)], None, [torch.ones(2)])
    with pytest.raises(ValueError, match="needs ref_log_probs"):
        _run(Config(kl_coef=0.1), [1.0], [torch.zeros(2)], None, [torch.ones(2)])
    with pytest.raises(ValueError, match="sample 0"):
        _run(Config(), [1.0], [torch.zeros(2)], None, [torch.ones(3)])


def _naive_rev(x: list[float], d: float) -> list[float]:
    out, run = [0.0] * len(x), 0.0
    for t in reversed(range(len(x))):
        run = x[t] + d * run
        out[t] = run
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=0, max_size=40), st.floats(0, 1), st.integers(1, 9))
def test_reverse_discounted_cumsum_matches_loop(x: list[float], d: float, chunk: int) -> None:
    got = reverse_discounted_cumsum(torch.tensor(x, dtype=torch.float64), d, chunk_size=chunk)
    assert got.tolist() == pytest.approx(_naive_rev(x, d), abs=1e-9)


def _naive_gae(r: list[float], v: list[float], gamma: float, lam: float) -> list[float]:
    adv, last = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        nv = v[t + 1] if t + 1 < len(r) else 0.0
        last = r[t] + gamma * nv - v[t] + gamma * lam * last
        adv[t] = last
    return adv


@settings(max_examples=40, deadline=None)
@given(st.data(), st.floats(0, 1), st.floats(0, 1))
def test_gae_matches_reference_on_trainable_subsequence(
    data: st.DataObject, gamma: float, lam: float
) -> None:
    args = Config(advantage_estimator="ppo", gamma=gamma, lambd=lam)
    n = data.draw(st.integers(1, 3))
    lens = data.draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    rewards = data.draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n))
    masks = [
        torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k)), dtype=torch.float64)
        for k in lens
    ]
    values = [
        torch.tensor(data.draw(st.lists(st.floats(-2, 2), min_size=k, max_size=k)), dtype=torch.float64)
        for k in lens
    ]
    adv, ret = compute_advantages_and_returns(
        params=advantage_params(args),
        rewards=rewards,
        log_probs=[torch.zeros(k) for k in lens],
        ref_log_probs=None,
        loss_masks=masks,
        values=values,
    )
    for i in range(n):
        idx = masks[i].nonzero().flatten().tolist()
        v = [values[i][j].item() for j in idx]
        r = [0.0] * len(idx)
        if idx:
            r[-1] = rewards[i]
        expect = _naive_gae(r, v, gamma, lam)
        assert [adv[i][j].item() for j in idx] == pytest.approx(expect, abs=1e-9)
        assert [ret[i][j].item() for j in idx] == pytest.approx([e + x for e, x in zip(expect, v)], abs=1e-9)
        assert all(adv[i][j].item() == 0.0 for j in range(lens[i]) if j not in idx)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=4), st.data())
def test_gae_gamma_lambda_one_zero_values_is_return_to_go(lens: list[int], data: st.DataObject) -> None:
    rewards = data.draw(st.lists(st.floats(-3, 3), min_size=len(lens), max_size=len(lens)))
    masks = [torch.ones(k) for k in lens]
    rpp_args = Config(advantage_estimator="reinforce_plus_plus", gamma=1.0)
    ppo_args = Config(advantage_estimator="ppo", gamma=1.0, lambd=1.0)
    kw = {
        "rewards": rewards,
        "log_probs": [torch.zeros(k) for k in lens],
        "ref_log_probs": None,
        "loss_masks": masks,
    }
    ppo, _ = compute_advantages_and_returns(params=advantage_params(ppo_args), values=[torch.zeros(k) for k in lens], **kw)  # type: ignore[arg-type]
    rpp, _ = compute_advantages_and_returns(params=advantage_params(rpp_args), **kw)  # type: ignore[arg-type]
    for a, b, r in zip(ppo, rpp, rewards):
        assert a.tolist() == pytest.approx(b.tolist(), abs=1e-6)
        assert a.tolist() == pytest.approx([r] * a.numel(), abs=1e-6)


def test_normalize_advantages_masked_whitening() -> None:
    adv = [T([1.0, 3.0, 100.0]), T([5.0])]
    masks = [T([1, 1, 0]), T([1])]
    out = normalize_advantages(adv, masks)
    flat = torch.cat(out)
    m = torch.cat(masks).bool()
    assert flat[m].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert flat[m].var(correction=1).item() == pytest.approx(1.0, rel=1e-5)
    mean, std = 3.0, 2.0  # unbiased variance of (1, 3, 5) is 4
    assert out[0][2].item() == pytest.approx((100.0 - mean) / std, rel=1e-5)  # applied everywhere
    assert normalize_advantages([T([2.0])], [T([0])])[0].tolist() == [2.0]
