"""examples/train_infer_mismatch: the MIS hook on hand-computed ratios, the noisy engine, a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from examples.train_infer_mismatch import run
from examples.train_infer_mismatch.mis import MIS_CONFIG, compute_mis_weights, effective_sample_size
from examples.train_infer_mismatch.noisy_engine import NoisyLogProbEngine
from miles_sdk.config import Config
from miles_sdk.hooks import TISFn
from miles_sdk.testing import ScriptedEngine, check_hook


def test_effective_sample_size_by_hand() -> None:
    w = torch.tensor([1.0, 3.0])
    assert float(effective_sample_size(w, torch.ones(2))) == pytest.approx(16 / 20)  # (1+3)^2 / (2 * 10)
    assert float(effective_sample_size(w, torch.tensor([1.0, 0.0]))) == 1.0
    assert float(effective_sample_size(w, torch.zeros(2))) == 0.0


def test_compute_mis_weights_truncates_masks_and_reports_ess() -> None:
    args = Config(**{**MIS_CONFIG, "tis_batch_normalize": False})
    train = [torch.tensor([-1.0, -1.0, -1.0])]
    # Ratios train/rollout: 1 (kept), 4 (truncated to 2, rejected: > 2), 1/1.5 (kept: in [0.5, 2]).
    rollout = [torch.tensor([-1.0, -1.0 - math.log(4.0), -1.0 + math.log(1.5)])]
    pg_loss, masks, metrics = compute_mis_weights(
        args=args,
        pg_loss=torch.ones(3),
        train_log_probs=train,
        rollout_log_probs=rollout,
        loss_masks=[torch.ones(3)],
        total_lengths=[5],
        response_lengths=[3],
    )
    torch.testing.assert_close(pg_loss, torch.tensor([1.0, 2.0, 1 / 1.5]))
    torch.testing.assert_close(masks[0], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(metrics["mis_masked_fraction"], torch.tensor([0.0, 1.0, 0.0]))
    # ESS over the kept weights [1, 2/3]: (5/3)^2 / (2 * (1 + 4/9)) = 25/26.
    assert float(metrics["mis_ess"]) == pytest.approx(25 / 26)
    check_hook(compute_mis_weights, TISFn)


def test_batch_normalisation_brings_the_mean_weight_to_one() -> None:
    args = Config(**MIS_CONFIG)
    _, _, metrics = compute_mis_weights(
        args=args,
        pg_loss=torch.ones(3),
        train_log_probs=[torch.tensor([-1.0, -1.0, -1.0])],
        rollout_log_probs=[torch.tensor([-1.0, -1.0 - math.log(1.8), -1.0 + math.log(1.5)])],
        loss_masks=[torch.ones(3)],
        total_lengths=[3],
        response_lengths=[3],
    )
    assert float(metrics["mis_is_ratio_final"].mean()) == pytest.approx(1.0)


async def test_noisy_engine_keeps_tokens_and_perturbs_log_probs() -> None:
    inner = ScriptedEngine([5, 6, 7, 8], log_probs=-0.25)
    out = await NoisyLogProbEngine(inner, sigma=0.5, seed=1).generate([1, 2], {"max_new_tokens": 8})
    assert out.token_ids == [5, 6, 7, 8]
    assert all(lp <= 0.0 for lp in out.log_probs) and out.log_probs != [-0.25] * 4
    exact = await NoisyLogProbEngine(inner, sigma=0.0).generate([1, 2], {"max_new_tokens": 8})
    assert exact.log_probs == [-0.25] * 4
    with pytest.raises(ValueError, match="sigma"):
        NoisyLogProbEngine(inner, sigma=-1.0)


def test_run_logs_the_mismatch_metrics(tmp_path: Path) -> None:
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "train/loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert set(run.MISMATCH_METRICS) <= set(r)
        assert 0.0 < r["train/mis_masked_fraction"] < 0.5  # sigma=0.5 noise: about 1 token in 6
        assert 0.0 < r["train/mis_ess"] <= 1.0
