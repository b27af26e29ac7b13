"""compute_loss orchestration: hand-computed losses per option, masked gradients, gradcheck."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import compute_loss, constant_divisor_reducer, loss_params, old_log_probs_source
from miles_sdk.config import Config
from miles_sdk.hooks import TISResult
from miles_sdk.stages import MicroBatch

T = torch.tensor
F64 = torch.float64



def _loss(
    args: Config,
    batch: dict[str, Any],
    log_probs: list[torch.Tensor],
    entropy: list[torch.Tensor] | None,
    values: list[torch.Tensor] | None = None,
    **hooks: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """compute_loss on Miles's dict layout, with the Config mapped as the backend maps it."""
    return compute_loss(
        MicroBatch.from_dict(batch), log_probs, entropy, values, params=loss_params(args), hook_args=args, **hooks
    )

def _batch(**extra: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "response_lengths": [2, 1],
        "total_lengths": [5, 3],
        "loss_masks": [T([1, 1]), T([1])],
        "advantages": [T([1.0, 1.0], dtype=F64), T([-2.0], dtype=F64)],
        "log_probs": [T([-1.0, -1.0], dtype=F64), T([-0.5], dtype=F64)],
    }
    batch.update(extra)
    return batch


def _cur(shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> list[torch.Tensor]:
    return [
        T([-1.0 + shift[0], -1.0 + shift[1]], dtype=F64).requires_grad_(True),
        T([-0.5 + shift[2]], dtype=F64).requires_grad_(True),
    ]


def test_plain_policy_loss_by_hand() -> None:
    loss, m = _loss(Config(), _batch(), _cur(), None)
    # ratio 1 everywhere: pg = -A; sample means -1 and 2; mean over samples 0.5
    assert loss.item() == pytest.approx(0.5)
    assert m["pg_loss"].item() == pytest.approx(0.5)
    assert m["loss"].item() == pytest.approx(0.5)
    assert m["pg_clipfrac"].item() == 0.0 and m["ppo_kl"].item() == 0.0
    assert m["entropy_loss"].item() == 0.0 and "kl_loss" not in m
    assert all(not v.requires_grad for v in m.values())


def test_clipped_policy_loss_by_hand() -> None:
    cur = _cur((math.log(1.5), 0.0, math.log(0.5)))  # ratios 1.5, 1, 0.5
    loss, m = _loss(Config(), _batch(), cur, None)
    # sample 0: (-1.2 + -1) / 2 = -1.1 ; sample 1: A=-2, ratio .5 -> max(1, 1.6) = 1.6
    assert loss.item() == pytest.approx((-1.1 + 1.6) / 2)
    assert m["pg_clipfrac"].item() == pytest.approx((0.5 + 1.0) / 2)
    assert m["pg_clipfrac_high"].item() == pytest.approx(0.25)
    assert m["pg_clipfrac_low"].item() == pytest.approx(0.5)


def test_entropy_bonus_and_kl_loss() -> None:
    args = Config(entropy_coef=0.1, use_kl_loss=True, kl_loss_coef=0.5, kl_loss_type="k1")
    ref = [T([-1.2, -1.2], dtype=F64), T([-0.9], dtype=F64)]
    entropy = [T([1.0, 1.0], dtype=F64), T([3.0], dtype=F64)]
    loss, m = _loss(args, _batch(ref_log_probs=ref), _cur(), entropy)
    assert m["entropy_loss"].item() == pytest.approx(2.0)
    assert m["kl_loss"].item() == pytest.approx((0.2 + 0.4) / 2)
    assert loss.item() == pytest.approx(0.5 - 0.1 * 2.0 + 0.5 * 0.3)


def test_unbiased_kl_multiplies_by_ratio() -> None:
    args = Config(use_kl_loss=True, kl_loss_coef=1.0, kl_loss_type="k2", use_unbiased_kl=True)
    ref = [T([-1.0, -1.0], dtype=F64), T([-1.5], dtype=F64)]
    cur = _cur((0.0, 0.0, math.log(2.0)))  # sample 1 ratio 2, d = -0.5+ln2+1.5
    _, m = _loss(args, _batch(ref_log_probs=ref), cur, None)
    d = -0.5 + math.log(2.0) + 1.5
    assert m["kl_loss"].item() == pytest.approx((0.0 + 2.0 * d * d / 2) / 2)


def test_custom_pg_reducer_only_changes_pg_term() -> None:
    loss, m = _loss(Config(), _batch(), _cur(), None, pg_loss_reducer=constant_divisor_reducer(10.0))
    assert m["pg_loss"].item() == pytest.approx((-2 / 10 + 2 / 10) / 2)
    assert loss.item() == pytest.approx(0.0)


def test_builtin_tis() -> None:
    args = Config(use_tis=True, tis_clip=2.0)
    rollout = [T([-1.0, -1.0 - math.log(1.5)], dtype=F64), T([-0.5 + math.log(4.0)], dtype=F64)]
    loss, m = _loss(args, _batch(rollout_log_probs=rollout), _cur(), None)
    # weights 1, 1.5, 0.25: sample 0 (-1 - 1.5)/2, sample 1 2 * .25
    assert loss.item() == pytest.approx((-1.25 + 0.5) / 2)
    assert m["tis"].item() == pytest.approx(((1 + 1.5) / 2 + 0.25) / 2)
    assert m["tis_clipfrac"].item() == 0.0
    assert "ois" in m and "train_rollout_logprob_abs_diff" in m


def test_mismatch_metrics_alone_do_not_reweight() -> None:
    rollout = [T([-1.0, -1.0 - math.log(1.5)], dtype=F64), T([-0.5 + math.log(4.0)], dtype=F64)]
    loss, m = _loss(Config(get_mismatch_metrics=True), _batch(rollout_log_probs=rollout), _cur(), None)
    assert loss.item() == pytest.approx(0.5)
    assert m["tis"].item() == pytest.approx(((1 + 1.5) / 2 + 0.25) / 2)


def test_custom_tis_masks_change_numerator_only() -> None:
    def drop_first(
        *,
        args: Config,
        pg_loss: torch.Tensor,
        train_log_probs: list[torch.Tensor],
        rollout_log_probs: list[torch.Tensor],
        loss_masks: list[torch.Tensor],
        total_lengths: list[int],
        response_lengths: list[int],
        **kwargs: Any,
    ) -> TISResult:
        masks = [m.clone() for m in loss_masks]
        masks[0][0] = 0
        return pg_loss, masks, {"dropped": torch.full_like(pg_loss, 0.5)}

    args = Config(get_mismatch_metrics=True)
    rollout = [T([-1.0, -1.0], dtype=F64), T([-0.5], dtype=F64)]
    loss, m = _loss(args, _batch(rollout_log_probs=rollout), _cur(), None, tis_fn=drop_first)
    assert loss.item() == pytest.approx((-1 / 2 + 2) / 2)  # denominator of sample 0 stays 2
    assert m["dropped"].item() == pytest.approx(0.5)


def test_masked_tokens_get_zero_gradient_even_with_nan() -> None:
    batch = _batch(
        loss_masks=[T([1, 0]), T([1])], advantages=[T([1.0, math.nan], dtype=F64), T([-2.0], dtype=F64)]
    )
    cur = _cur()
    loss, _ = _loss(
        Config(entropy_coef=0.01), batch, cur, [T([1.0, math.nan], dtype=F64), T([2.0], dtype=F64)]
    )
    torch.autograd.backward([loss])
    assert cur[0].grad is not None and cur[1].grad is not None
    assert cur[0].grad[1].item() == 0.0
    assert cur[0].grad[0].item() == pytest.approx(-0.5)  # d(-ratio*A)/dlogp / n_samples
    assert math.isfinite(loss.item())


def test_gradcheck_full_policy_loss() -> None:
    args = Config(
        entropy_coef=0.0,
        use_kl_loss=True,
        kl_loss_coef=0.3,
        kl_loss_type="k3",
        use_tis=True,
        eps_clip=0.2,
        eps_clip_high=0.3,
    )
    rollout = [T([-1.1, -0.8], dtype=F64), T([-0.6], dtype=F64)]
    ref = [T([-1.3, -0.9], dtype=F64), T([-0.2], dtype=F64)]
    batch = _batch(rollout_log_probs=rollout, ref_log_probs=ref)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _loss(args, batch, [a, b], None)[0]

    a = T([-0.95, -1.1], dtype=F64, requires_grad=True)
    b = T([-0.45], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (a, b))


def test_gspo_uses_sequence_ratio() -> None:
    args = Config(advantage_estimator="gspo")
    cur = _cur((0.2, -0.2, 0.0))  # sequence mean log-ratio 0 for sample 0 -> ratio 1 everywhere
    loss, m = _loss(args, _batch(), cur, None)
    assert loss.item() == pytest.approx(0.5)
    assert m["ppo_kl"].item() == pytest.approx(0.0)


def test_use_rollout_logprobs_reads_rollout_key() -> None:
    args = Config(use_rollout_logprobs=True)
    assert old_log_probs_source(args) == "rollout_log_probs"
    assert old_log_probs_source(Config()) == "log_probs"
    with pytest.raises(KeyError, match="rollout_log_probs.*use_rollout_logprobs"):
        _loss(args, _batch(), _cur(), None)
    rollout = [T([-1.0, -1.0], dtype=F64), T([-0.5 - math.log(2.0)], dtype=F64)]  # ratio 2 on sample 1
    _, m = _loss(args, _batch(log_probs=None, rollout_log_probs=rollout), _cur(), None)
    # sample 1: A=-2, ratio 2 -> max(4, 2.4) = 4; sample 0: -1
    assert m["pg_loss"].item() == pytest.approx((-1 + 4) / 2)


def test_sft_and_value_loss() -> None:
    loss, m = _loss(Config(loss_type="sft_loss"), _batch(), _cur(), None)
    assert loss.item() == pytest.approx((1.0 + 0.5) / 2) and set(m) == {"loss"}
    values = [T([0.5, 0.1], dtype=F64, requires_grad=True), T([0.0], dtype=F64, requires_grad=True)]
    batch = _batch(
        values=[T([0.0, 0.0], dtype=F64), T([0.0], dtype=F64)],
        returns=[T([1.0, -1.0], dtype=F64), T([0.0], dtype=F64)],
    )
    loss, m = _loss(Config(loss_type="value_loss"), batch, _cur(), None, values)
    assert loss.item() == pytest.approx(((0.64 + 1.21) / 2 + 0.0) / 2)
    assert m["value_clipfrac"].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="needs values"):
        _loss(Config(loss_type="value_loss"), batch, _cur(), None)


def test_errors_name_missing_inputs() -> None:
    with pytest.raises(KeyError, match="ref_log_probs"):
        _loss(Config(use_kl_loss=True), _batch(), _cur(), None)
    with pytest.raises(KeyError, match="rollout_log_probs"):
        _loss(Config(use_tis=True), _batch(), _cur(), None)
    with pytest.raises(ValueError, match="entropy_coef"):
        _loss(Config(entropy_coef=0.1), _batch(), _cur(), None)
    with pytest.raises(ValueError, match=r"loss_masks\[1\]"):
        _loss(Config(), _batch(loss_masks=[T([1, 1]), T([1, 1])]), _cur(), None)
    with pytest.raises(ValueError, match="custom_loss"):
        _loss(Config(loss_type="custom_loss", custom_loss_function_path="m.f"), _batch(), _cur(), None)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(["grpo", "gspo"]), st.booleans())
def test_masked_tokens_never_get_gradient(data: st.DataObject, est: str, per_token: bool) -> None:
    n = data.draw(st.integers(1, 3))
    lens = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    floats = st.floats(-3, 0)

    def vec(k: int, elems: st.SearchStrategy[float] = floats) -> torch.Tensor:
        return T(data.draw(st.lists(elems, min_size=k, max_size=k)), dtype=F64)

    masks = [T(data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k))) for k in lens]
    batch = {
        "response_lengths": lens,
        "total_lengths": [k + 2 for k in lens],
        "loss_masks": masks,
        "advantages": [vec(k, st.floats(-2, 2)) for k in lens],
        "log_probs": [vec(k) for k in lens],
        "ref_log_probs": [vec(k) for k in lens],
        "rollout_log_probs": [vec(k) for k in lens],
    }
    args = Config(
        advantage_estimator=est,
        calculate_per_token_loss=per_token,
        entropy_coef=0.01,  # type: ignore[arg-type]
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="low_var_kl",
        use_tis=True,
    )
    cur = [vec(k).requires_grad_(True) for k in lens]
    ent = [vec(k, st.floats(0, 3)).requires_grad_(True) for k in lens]
    loss, _ = _loss(args, batch, cur, ent)
    torch.autograd.backward([loss])
    for c, e, m in zip(cur, ent, masks):
        assert c.grad is not None and e.grad is not None
        assert bool((c.grad[m == 0] == 0).all()) and bool((e.grad[m == 0] == 0).all())
        assert bool(torch.isfinite(c.grad).all())


def test_all_masked_micro_batch_is_finite_and_backpropagates() -> None:
    batch = _batch(loss_masks=[T([0, 0]), T([0])])
    cur = [T([-1.0, -math.inf], dtype=F64, requires_grad=True), T([-0.5], dtype=F64, requires_grad=True)]
    loss, m = _loss(Config(), batch, cur, None)
    assert loss.item() == 0.0 and m["pg_loss"].item() == 0.0
    torch.autograd.backward([loss])
    assert cur[0].grad is not None and cur[0].grad.tolist() == [0.0, 0.0]
