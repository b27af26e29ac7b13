"""LoRA learns the demo task (single-digit addition, GRPO, format warm-up) on the CPU.

The policy is the demo's two-layer shape at hidden size 256 rather than 64: LoRA cannot move the
tied embedding / LM head or the final norm, and at hidden 64 their random-init logit range caps
what any adapter can reach (supervised to one digit, LoRA stalls at p = 0.22 while full training
reaches 0.93; at hidden 256 LoRA reaches 0.93 too). docs/lora.md has the numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from miles_sdk.demo.run import demo_config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.rollout import check_reward_nonzero_std
from miles_sdk.testing import tiny_policy
from miles_sdk.trainer import Trainer


def test_lora_raises_the_demo_reward(tmp_path: Path) -> None:
    seed, rollouts = 0, 15
    torch.manual_seed(seed)
    rows = make_addition_dataset(seed)
    model, tok = tiny_policy("arithmetic", seed=seed, hidden_size=256, intermediate_size=768)
    format_warmup(model, tok, [r["input"] for r in rows], seed=seed)
    config = demo_config(str(tmp_path), rollouts, seed, progress_bar=False).replace(
        rollout_batch_size=16,
        n_samples_per_prompt=8,
        micro_batch_size=128,
        lr=5e-3,  # full-parameter demo: 2e-3
        lr_warmup_iters=5,
        lora_rank=8,
        lora_alpha=16,
        target_modules="all-linear",
    )
    with Trainer(
        config,
        model=model,
        tokenizer=tok,
        dataset=rows,
        reward_model=addition_reward,
        dynamic_sampling_filter=check_reward_nonzero_std,
    ) as trainer:
        history = trainer.fit()
        assert trainer.policy.lora is not None
    rewards = [m["rollout/reward_mean"] for m in history]
    last5 = sum(rewards[-5:]) / 5
    # Measured: 0.148 -> 0.428 (seeds 1 and 2: +0.22, +0.16).
    assert last5 - rewards[0] >= 0.15, rewards
