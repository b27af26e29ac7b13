"""Regression cases from a differential run of miles_sdk.algo against Miles's training math.

The run fed identical random inputs to both (KL estimators, PPO/dual-clip loss, GSPO KL, reducers,
all advantage estimators incl. GAE, whitening, vanilla TIS, MIS, the full policy loss and its
gradient, value loss, GRPO reward normalisation). These tests pin, with hand-computed values, the
cases where the two disagreed: Miles bugs we do not copy, deliberate differences, and metrics added
to match Miles's names.
"""

from __future__ import annotations

import math

import pytest
import torch

from miles_sdk.algo import grpo_reward_post_process, mis_function, mismatch_metrics, normalize_advantages
from miles_sdk.config import Config
from miles_sdk.types import Sample


def test_whitening_is_exact_when_the_mean_dwarfs_the_spread() -> None:
    # mean 1e4, unbiased variance ((-1)^2 + 0 + 1^2) / 2 = 1. Miles's E[A^2] - mean^2 in float32
    # loses everything here (1e8 has a float32 spacing of 8) and returns +-1e4.
    out = normalize_advantages([torch.tensor([9999.0, 10000.0, 10001.0])], [torch.ones(3)])
    assert out[0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)


def test_whitening_small_spread_around_a_large_mean() -> None:
    base = torch.tensor([5.0, 5.01, 4.99, 5.02, 4.98])
    # By hand: mean 5, deviations [0, .01, -.01, .02, -.02], unbiased var = 0.001 / 4 = 2.5e-4.
    expected = [d / math.sqrt(2.5e-4 + 1e-8) for d in (0.0, 0.01, -0.01, 0.02, -0.02)]
    out = normalize_advantages([base], [torch.ones(5)])
    assert out[0].tolist() == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_reward_groups_without_group_index_are_runs_even_for_a_short_batch() -> None:
    # 4 samples where rollout_batch_size * n = 8: Miles normalises all 4 as one group
    # ([0.5, -1.5, 0.5, 0.5]); here they are the runs [1, 0] and [1, 1].
    args = Config(n_samples_per_prompt=2, rollout_batch_size=4)
    samples = [Sample(reward=r, index=i) for i, r in enumerate([1.0, 0.0, 1.0, 1.0])]
    _, out = grpo_reward_post_process(args, samples)
    z = 0.5 / (math.sqrt(0.5) + 1e-6)  # centred +-0.5, unbiased std of [1, 0] is sqrt(0.5)
    assert out == pytest.approx([z, -z, 0.0, 0.0])


def test_ppl_metrics_by_hand() -> None:
    train = [torch.tensor([-1.0, -2.0])]
    rollout = [torch.tensor([-1.5, -2.0])]
    m = mismatch_metrics(train, rollout, [torch.ones(2)])
    # log-ppl: training 1.5, rollout 1.75.
    assert m["training_ppl"].tolist() == pytest.approx([math.exp(1.5)] * 2)
    assert m["rollout_ppl"].tolist() == pytest.approx([math.exp(1.75)] * 2)
    assert m["log_ppl_diff"].tolist() == pytest.approx([-0.25] * 2)
    assert m["ppl_ratio"].tolist() == pytest.approx([math.exp(-0.25)] * 2)


def test_mis_final_weight_summaries_by_hand() -> None:
    args = Config(use_tis=True, tis_mode="truncate", tis_upper_bound=2.0)
    train = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.0])]
    rollout = [torch.tensor([-1.5, -2.0, -1.0]), torch.tensor([-1.0])]
    masks = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0])]
    _, _, metrics = mis_function(
        args=args,
        pg_loss=torch.ones(4),
        train_log_probs=train,
        rollout_log_probs=rollout,
        loss_masks=masks,
        total_lengths=[5, 3],
        response_lengths=[3, 1],
    )
    w0 = math.exp(0.5)  # token ratios of sample 0: e^0.5, 1 (the third token is masked)
    assert metrics["mis_tis_weight_after_bound"].tolist() == pytest.approx([w0, 1.0, 0.0, 0.0])
    assert metrics["mis_is_ratio_mean_final"].tolist() == pytest.approx([(w0 + 1) / 2] * 3 + [0.0])
    assert metrics["mis_is_ratio_min_final"].tolist() == pytest.approx([1.0] * 3 + [0.0])
    assert metrics["mis_is_ratio_max_final"].tolist() == pytest.approx([w0] * 3 + [0.0])
