"""The demo's plumbing in a fast mode (the reward rise itself is the README's main command)."""

from __future__ import annotations

import json
from pathlib import Path

from miles_sdk.demo import addition_reward, make_addition_dataset
from miles_sdk.demo.run import main
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
