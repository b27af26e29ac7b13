"""The embedded demo: GRPO teaches a tiny in-code policy single-digit addition on the CPU.

    python -m miles_sdk.demo [--output-dir DIR] [--num-rollout N]

It prints the first rollout's mean reward and the mean of the last five, writes
``metrics.jsonl`` and ``reward.png`` to the output folder, and exits 0 only if the reward rose by
at least ``--min-rise`` (0.4).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from miles_sdk.config import Config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.logging import plot_metrics
from miles_sdk.testing import tiny_policy
from miles_sdk.trainer import Trainer

__all__ = ["demo_config", "main", "run_demo"]


def demo_config(output_dir: str, num_rollout: int, seed: int) -> Config:
    return Config(
        num_rollout=num_rollout,
        label_key="label",
        rollout_batch_size=16,
        n_samples_per_prompt=16,
        rollout_max_response_len=3,
        rollout_temperature=1.0,
        lr=2e-3,
        lr_warmup_iters=20,
        adam_beta2=0.99,
        micro_batch_size=64,
        num_steps_per_rollout=1,
        rollout_shuffle=True,
        seed=seed,
        rollout_seed=seed,
        device="cpu",
        output_dir=output_dir,
        max_engine_batch_size=128,
    )


def run_demo(
    output_dir: str, num_rollout: int = 500, seed: int = 0, min_rise: float = 0.4
) -> tuple[float, float]:
    """Train and return (first rollout reward, mean of the last five)."""
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = make_addition_dataset(seed)
    model, tokenizer = tiny_policy("arithmetic", seed=seed)
    format_warmup(model, tokenizer, [r["input"] for r in rows], seed=seed)
    trainer = Trainer(
        demo_config(output_dir, num_rollout, seed),
        model=model,
        tokenizer=tokenizer,
        dataset=rows,
        reward_model=addition_reward,
    )
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    rewards = [m["rollout/reward_mean"] for m in history]
    jsonl = Path(output_dir) / "metrics.jsonl"
    plot_metrics(jsonl, Path(output_dir) / "reward.png")
    return rewards[0], sum(rewards[-5:]) / len(rewards[-5:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m miles_sdk.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--num-rollout", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-rise", type=float, default=0.4)
    ns = parser.parse_args(argv)
    Path(ns.output_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    first, last5 = run_demo(ns.output_dir, ns.num_rollout, ns.seed, ns.min_rise)
    seconds = time.perf_counter() - start
    rise = last5 - first
    print(f"first rollout reward: {first:.3f}")
    print(f"mean reward of last 5 rollouts: {last5:.3f}")
    print(f"rise: {rise:+.3f} (target >= {ns.min_rise}) in {seconds:.0f} s")
    print(f"metrics: {Path(ns.output_dir) / 'metrics.jsonl'}  plot: {Path(ns.output_dir) / 'reward.png'}")
    return 0 if rise >= ns.min_rise else 1


if __name__ == "__main__":
    sys.exit(main())
