"""TIS / MIS: hand-computed weights and masks, bounds property, mismatch metrics."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.algo import mis_function, mismatch_metrics, vanilla_tis_function
from miles_sdk.config import Config
from miles_sdk.hooks import TISFn, TISResult

T = torch.tensor


def _call(
    fn: TISFn,
    args: Config,
    train: list[torch.Tensor],
    rollout: list[torch.Tensor],
    masks: list[torch.Tensor] | None = None,
    pg: torch.Tensor | None = None,
) -> TISResult:
    masks = masks if masks is not None else [torch.ones_like(t) for t in train]
    lens = [t.numel() for t in train]
    pg = pg if pg is not None else torch.ones(sum(lens))
    return fn(
        args=args,
        pg_loss=pg,
        train_log_probs=train,
        rollout_log_probs=rollout,
        loss_masks=masks,
        total_lengths=[n + 3 for n in lens],
        response_lengths=lens,
    )


def test_functions_satisfy_the_hook_protocol() -> None:
    fns: list[TISFn] = [vanilla_tis_function, mis_function]
    assert len(fns) == 2


def test_vanilla_tis_by_hand() -> None:
    args = Config(use_tis=True, tis_clip=1.5, tis_clip_low=0.5)
    pg, masks, m = _call(vanilla_tis_function, args, [T([-1.0, -1.0, -1.0])], [T([-1.0, -1.5, -0.2])])
    assert pg.tolist() == pytest.approx([1.0, 1.5, 0.5])
    assert masks[0].tolist() == [1.0, 1.0, 1.0]
    assert m["tis"].tolist() == pytest.approx([1.0, math.exp(0.5), math.exp(-0.8)], rel=1e-6)
    assert m["tis_clipfrac"].tolist() == [0.0, 1.0, 1.0]
    assert m["tis_abs"].tolist() == pytest.approx([0.0, math.exp(0.5) - 1, 1 - math.exp(-0.8)], rel=1e-6)


def _mis(**kw: Any) -> Config:
    return Config(use_tis=True, **kw)


def test_mis_token_truncate() -> None:
    pg, masks, m = _call(mis_function, _mis(tis_upper_bound=2.0), [T([0.0, 0.0])], [T([0.0, -1.0])])
    assert pg.tolist() == pytest.approx([1.0, 2.0])
    assert masks[0].tolist() == [1.0, 1.0]
    assert m["mis_tis_truncate_fraction"].tolist() == [0.0, 1.0]


def test_mis_token_clip_default_lower_bound() -> None:
    args = _mis(tis_mode="clip", tis_upper_bound=2.0)  # lower defaults to 1/2
    pg, _, _ = _call(mis_function, args, [T([0.0, 0.0, 0.0])], [T([0.0, -1.0, 1.0])])
    assert pg.tolist() == pytest.approx([1.0, 2.0, 0.5])


def test_mis_mask_mode_masks_out_of_range_tokens() -> None:
    args = _mis(tis_mode="mask", tis_lower_bound=0.5, tis_upper_bound=2.0)
    pg, masks, m = _call(mis_function, args, [T([0.0, 0.0, 0.0])], [T([0.0, -1.0, 1.2])])
    assert masks[0].tolist() == [1.0, 0.0, 0.0]
    assert pg.tolist() == pytest.approx([1.0, math.e, math.exp(-1.2)], rel=1e-6)
    assert m["mis_tis_mask_fraction_high"].tolist() == [0.0, 1.0, 0.0]
    assert m["mis_tis_mask_fraction_low"].tolist() == [0.0, 0.0, 1.0]
    assert m["mis_masked_fraction"].tolist() == [0.0, 1.0, 1.0]


def test_mis_sequence_and_geometric_levels() -> None:
    train, rollout = [T([0.0, 0.0, 0.0])], [T([-0.2, -0.4, -5.0])]
    mask = [T([1.0, 1.0, 0.0])]
    seq, _, _ = _call(mis_function, _mis(tis_level="sequence", tis_upper_bound=10.0), train, rollout, mask)
    assert seq.tolist() == pytest.approx([math.exp(0.6), math.exp(0.6), 0.0], rel=1e-6)  # 0 at padding
    geo, _, _ = _call(mis_function, _mis(tis_level="geometric", tis_upper_bound=10.0), train, rollout, mask)
    assert geo.tolist() == pytest.approx([math.exp(0.3), math.exp(0.3), 0.0], rel=1e-6)


def test_rs_masks_and_veto() -> None:
    args = Config(use_rs=True, rs_lower_bound=0.5, rs_upper_bound=2.0, rs_veto_threshold=1e-4)
    train = [T([0.0, 0.0]), T([0.0, -12.0])]
    rollout = [T([0.0, -1.0]), T([0.0, 0.0])]
    pg, masks, m = _call(mis_function, args, train, rollout)
    assert pg.tolist() == [1.0, 1.0, 1.0, 1.0]  # use_tis off: no reweighting
    assert masks[0].tolist() == [1.0, 0.0]
    assert masks[1].tolist() == [0.0, 0.0]  # vetoed: a token ratio exp(-12) < 1e-4
    assert m["mis_rs_catastrophic_seq_fraction"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_batch_normalize_token_level() -> None:
    args = _mis(tis_upper_bound=2.0, tis_batch_normalize=True)
    pg, _, m = _call(mis_function, args, [T([0.0, 0.0])], [T([0.0, -1.0])])
    assert pg.tolist() == pytest.approx([2 / 3, 4 / 3])  # [1, 2] / mean 1.5
    assert m["mis_batch_norm_factor"].tolist() == pytest.approx([1.5, 1.5])


def test_mismatch_metrics_by_hand() -> None:
    m = mismatch_metrics([T([-1.0, -2.0])], [T([-1.5, -2.0])], [T([1.0, 1.0])])
    assert m["kl"].tolist() == pytest.approx([-0.5, 0.0])
    assert m["k3_kl"].tolist() == pytest.approx([math.exp(0.5) - 1.5, 0.0])
    assert m["training_log_ppl"].tolist() == pytest.approx([1.5, 1.5])
    assert m["rollout_log_ppl"].tolist() == pytest.approx([1.75, 1.75])
    assert m["chi2_seq"].tolist() == pytest.approx([math.exp(1.0) - 1] * 2, rel=1e-6)
    assert "masked_fraction" not in m


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="sample 0 shapes differ"):
        _call(vanilla_tis_function, Config(use_tis=True), [T([0.0, 0.0])], [T([0.0])])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-8, 0), st.floats(-8, 0)), min_size=1, max_size=16),
    st.floats(0.0, 0.9),
    st.floats(1.1, 5.0),
    st.sampled_from(["truncate", "clip"]),
)
def test_weights_stay_within_bounds(
    pairs: list[tuple[float, float]], low: float, high: float, mode: str
) -> None:
    train = [T([a for a, _ in pairs], dtype=torch.float64)]
    rollout = [T([b for _, b in pairs], dtype=torch.float64)]
    ones = torch.ones(len(pairs), dtype=torch.float64)
    pg, _, _ = _call(
        vanilla_tis_function, Config(use_tis=True, tis_clip=high, tis_clip_low=low), train, rollout, pg=ones
    )
    assert bool(((pg >= low - 1e-12) & (pg <= high + 1e-12)).all())
    lower = max(low, 1e-3)
    args = _mis(tis_mode=mode, tis_lower_bound=lower, tis_upper_bound=high)
    pg2, _, _ = _call(mis_function, args, train, rollout, pg=ones)
    floor = 0.0 if mode == "truncate" else lower
    assert bool(((pg2 >= floor - 1e-12) & (pg2 <= high + 1e-12)).all())
