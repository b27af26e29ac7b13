"""ppo under train_backend="fsdp": the critic is sharded on the ranks like the policy; 2 ranks
train what one process trains, and its shards resume on another world size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from miles_sdk import Config, Sample, Trainer
from miles_sdk.testing.run import run_steps, small_config
from miles_sdk.testing.tiny import tiny_policy

COMPARED = (
    "train/grad_norm",
    "train/pg_loss",
    "train/critic_grad_norm",
    "train/critic_value_loss",
    "train/critic_value_clipfrac",
)
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def spread_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


def _config(**overrides: Any) -> Config:
    # Two optimizer steps per rollout: the second trains the critic off its first update.
    return small_config(
        rollout_batch_size=4,
        n_samples_per_prompt=2,
        global_batch_size=4,
        lr=1e-3,
        rollout_seed=7,
        advantage_estimator="ppo",
        **overrides,
    )


def test_ppo_on_two_ranks_matches_one_process_and_resumes_on_one(tmp_path: Path) -> None:
    one = run_steps({"reward_model": spread_reward}, config=_config(), steps=2, dataset=DATASET)
    save = tmp_path / "ckpt"
    two = run_steps(
        {"reward_model": spread_reward},
        config=_config(
            train_backend="fsdp",
            actor_num_gpus_per_node=2,
            distributed_launcher="processes",
            save=str(save),
            save_interval=1,
        ),
        steps=2,
        dataset=DATASET,
    )
    assert one.metrics[0]["train/critic_grad_norm"] > 1e-3, "the comparison needs a critic gradient"
    for step, (a, b) in enumerate(zip(one.metrics, two.metrics, strict=True)):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (step, key)

    model, tok = tiny_policy("unit", seed=0)
    config = _config(train_backend="fsdp", load=str(save), ckpt_step=1)
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
        assert trainer.rollout_id == 1
        resumed = trainer.step()
    for key in COMPARED:
        assert resumed[key] == pytest.approx(two.metrics[1][key], rel=1e-4, abs=1e-7), key
