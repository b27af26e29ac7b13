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


def test_the_sharded_critic_runs_under_bf16_compute() -> None:
    """On GPUs the ranks compute in bf16 (MixedPrecisionPolicy): the value head, which reads fp32
    hidden states, keeps fp32 parameters (it raised 'mat1 and mat2 must have the same dtype')."""
    import functools
    import os

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from miles_sdk.backends.critic import Critic
    from miles_sdk.distributed.launch import _free_port
    from miles_sdk.distributed.sharding import shard_value_model

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        policy, _ = tiny_policy("unit", seed=0)
        shard = functools.partial(shard_value_model, mesh=mesh, param_dtype=torch.bfloat16, cpu_offload=False)
        critic = Critic(_config(), policy, shard=shard)
        values = critic.values([[1, 2, 3, 4], [5, 6, 7]], [2, 1])
        assert [v.dtype for v in values] == [torch.float32, torch.float32]
        torch.autograd.backward(sum(v.sum() for v in values))
        assert critic.model.value_head.weight.grad is not None
    finally:
        dist.destroy_process_group()
