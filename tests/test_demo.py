"""The demo's plumbing in a fast mode (the reward rise itself is the README's main command)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from miles_sdk.demo import addition_reward, make_addition_dataset
from miles_sdk.demo.run import DemoResult, main, parse_seeds
from miles_sdk.testing import call_hook, make_sample


def test_dataset_is_every_single_digit_sum() -> None:
    rows = make_addition_dataset(seed=0)
    assert len(rows) == 55
    assert all(int(r["label"]) == sum(int(x) for x in r["input"].rstrip("=").split("+")) for r in rows)


def test_reward_reads_the_answer_before_eos() -> None:
    assert call_hook(addition_reward, None, make_sample("3+4=", "7<|im_end|>", label="7")) == 1.0
    assert call_hook(addition_reward, None, make_sample("3+4=", "77", label="7")) == 0.0
    assert call_hook(addition_reward, None, make_sample("3+4=", "<|im_end|>", label="7")) == 0.0


def test_demo_writes_metrics_and_plot(tmp_path: Path, capsys: object) -> None:
    rc = main(["--output-dir", str(tmp_path), "--num-rollout", "3", "--min-rise", "-1"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (tmp_path / "reward.png").stat().st_size > 1000


def test_parse_seeds_reads_ranges_and_lists() -> None:
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
        parse_seeds("zero")


def test_a_collapsed_run_fails_whatever_its_rise() -> None:
    collapsed = DemoResult(seed=3, first=0.1, last5=0.6, truncated_last5=0.9, seconds=1.0)
    assert collapsed.collapsed and not collapsed.passed(0.4)
    assert DemoResult(seed=3, first=0.1, last5=0.0, truncated_last5=0.0, seconds=1.0).collapsed
    assert DemoResult(seed=0, first=0.1, last5=0.6, truncated_last5=0.0, seconds=1.0).passed(0.4)


def test_seed_sweep_runs_each_seed_without_collapse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 3 is the one that collapsed in issue 13 (every sample truncated, reward 0); a short
    run of it and seed 0 must keep answering (the full 100-rollout rise is the README's command)."""
    rc = main(["--seeds", "0,3", "--num-rollout", "20", "--min-rise", "-1", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["3"])]
    assert [int(r[0]) for r in rows] == [0, 3] and all(r[-1] == "pass" for r in rows), out
    # Seeds 4 and 6 sat on a plateau (issue 13): the policy, initialised with std 0.02, answered
    # every prompt alike (spread < 0.0005 for 60+ rollouts). With the fan-in init its answers
    # already depend on the prompt after 20 rollouts (measured 0.013 and 0.25).
    header = next(line.split() for line in out.splitlines() if line.split()[:1] == ["seed"])
    assert all(float(r[header.index("spread")]) > 0.003 for r in rows), out
    for seed in (0, 3):
        metrics = [json.loads(line) for line in (tmp_path / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 20
        # the dynamic filter kept only groups that teach something: no step trained on zero advantages
        assert all(m["rollout/reward_std"] > 0 for m in metrics)


def test_seed_sweep_exits_non_zero_when_a_seed_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--seeds", "1", "--num-rollout", "2", "--min-rise", "5", "--output-dir", str(tmp_path)])
    assert rc == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0/1 seeds" in out
