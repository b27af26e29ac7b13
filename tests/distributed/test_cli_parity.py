"""`miles-sdk train` with Miles's scale-out flags trains what the one-process run trains.

The same command line twice: once as it is (one process: the torch backend and the in-process
engine), once with ``--train-backend fsdp --actor-num-gpus-per-node 2 --rollout-num-gpus 2`` under
a local Ray cluster (2 FSDP ranks and 2 engine replicas, all Ray actors on the CPU). With a seed per
sample (``--sglang-enable-deterministic-inference``) both draw the same samples and rewards, and
every step's grad norm and policy loss agree to 1e-4 (relative), read from each run's
metrics.jsonl. Two optimizer steps per rollout, so the second step's ratio is not 1 and pg_loss is
not 0 by construction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from miles_sdk import cli
from miles_sdk.rollout.debug import load_rollout_data
from miles_sdk.testing import save_tiny_policy

STEPS = 3
COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "rollout/reward_mean")
SCALE_OUT = [
    "--train-backend", "fsdp",
    "--actor-num-nodes", "1",
    "--actor-num-gpus-per-node", "2",
    "--rollout-num-gpus", "2",
    "--rollout-num-gpus-per-engine", "1",
    "--distributed-launcher", "ray",
]  # fmt: skip

REWARD_MODULE = '''
async def spread_reward(args, sample):
    """Spread within groups, so every step has a gradient to compare."""
    return float(sum(sample.tokens[-8:]) % 3) / 2.0
'''


def _flags(root: Path, out: str) -> list[str]:
    return [
        "--hf-checkpoint", str(root / "policy"),
        "--prompt-data", str(root / "prompts.jsonl"),
        "--label-key", "label",
        "--custom-rm-path", "cli_parity_reward.spread_reward",
        "--rollout-batch-size", "4",
        "--n-samples-per-prompt", "2",
        "--rollout-max-response-len", "8",
        "--num-steps-per-rollout", "2",
        "--micro-batch-size", "2",
        "--max-engine-batch-size", "8",
        "--lr", "1e-3",
        "--rollout-seed", "7",
        "--sglang-enable-deterministic-inference",
        "--num-rollout", str(STEPS),
        "--device", "cpu",
        "--no-progress-bar",
        "--output-dir", str(root / out),
        "--save-debug-rollout-data", str(root / out / "rollout_{rollout_id}.pt"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_parity")
    save_tiny_policy(root / "policy", "unit", seed=0)
    rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "cli_parity_reward.py").write_text(REWARD_MODULE)
    return root


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_scale_out_flags_train_like_one_process(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    monkeypatch.chdir(workdir)  # the reward module resolves from the current directory, as for users
    assert cli.main(["train", *_flags(workdir, "one")]) == 0

    # The scale-out run as a user runs it: its own process, which starts (and stops) a Ray cluster.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "miles_sdk.cli", "train", *_flags(workdir, "scaled"), *SCALE_OUT]
    done = subprocess.run(
        [*command, "--check-weight-sync"],
        check=False,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 training rank(s) on cpu (gloo), launcher ray" in done.stderr
    assert "2 engine replicas as Ray actors" in done.stderr

    one, scaled = _metrics(workdir / "one"), _metrics(workdir / "scaled")
    assert [m["step"] for m in one] == [m["step"] for m in scaled] == list(range(STEPS))
    for step, (a, b) in enumerate(zip(one, scaled, strict=True)):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4), f"step {step}: {key}"
        assert abs(a["train/pg_loss"]) > 1e-4, "pg_loss should not be 0 by construction"
        assert a["train/grad_norm"] > 0.01, "the comparison needs a real gradient"
        groups_one = load_rollout_data(str(workdir / "one" / "rollout_{rollout_id}.pt"), step)
        groups_scaled = load_rollout_data(str(workdir / "scaled" / "rollout_{rollout_id}.pt"), step)
        flat_one = [s for g in groups_one for s in g]
        flat_scaled = [s for g in groups_scaled for s in g]
        assert len(flat_one) == 8
        assert [s.tokens for s in flat_scaled] == [s.tokens for s in flat_one], f"step {step}: different samples"
        assert [s.reward for s in flat_scaled] == [s.reward for s in flat_one], f"step {step}: different rewards"
