"""The embedded demo: GRPO teaches a tiny in-code policy single-digit addition on the CPU.

    python -m miles_sdk.demo [--output-dir DIR] [--num-rollout N] [--seed S | --seeds 0-9]

It prints the first rollout's mean reward and the mean of the last five, writes
``metrics.jsonl`` and ``reward.png`` to the output folder, and exits 0 only if the reward rose by
at least ``--min-rise`` (0.4) without collapsing. ``--seeds 0-9`` (or ``0,3,5``) runs each seed
into ``DIR/seed_<s>/`` and prints one table row per seed; it exits non-zero if any seed fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from miles_sdk.config import Config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.logging import plot_metrics
from miles_sdk.rollout import check_reward_nonzero_std
from miles_sdk.testing import tiny_policy
from miles_sdk.testing.tiny import TINY_PRESETS
from miles_sdk.trainer import Trainer

__all__ = ["DemoResult", "answer_spread", "demo_config", "main", "parse_seeds", "run_demo"]

_INIT_STD = TINY_PRESETS["arithmetic"].hidden_size ** -0.5

_COLLAPSE_TRUNCATED = 0.5
"""A run whose last five rollouts truncate more than this share of samples has lost EOS."""


def demo_config(output_dir: str, num_rollout: int, seed: int, *, progress_bar: bool = True) -> Config:
    return Config(
        num_rollout=num_rollout,
        label_key="label",
        rollout_batch_size=16,
        n_samples_per_prompt=16,
        rollout_max_response_len=3,
        rollout_temperature=1.0,
        lr=2e-3,
        lr_warmup_iters=20,
        # No decay: on a step whose groups all score alike every advantage is 0, and decay alone
        # would keep moving the weights (the dynamic filter below leaves few such steps anyway).
        weight_decay=0.0,
        adam_beta2=0.99,
        micro_batch_size=64,
        # Two PPO-clipped optimizer steps per rollout: generation (with over-sampling) is the
        # expensive part on the CPU, so each rollout teaches twice; measured about twice the
        # per-rollout progress of one step.
        num_steps_per_rollout=2,
        rollout_shuffle=True,
        seed=seed,
        rollout_seed=seed,
        device="cpu",
        output_dir=output_dir,
        max_engine_batch_size=256,
        # Once the policy answers most prompts right, most groups score alike and the filter below
        # drops them: without a cap one rollout drew up to 1536 groups (96x the batch). At 4x the
        # batch the rollout stops drawing and fills its empty slots with dropped groups.
        over_sampling_max_groups=4 * 16,
        progress_bar=progress_bar,
    )


@dataclass(frozen=True)
class DemoResult:
    """One seed's run: the first reward, the mean of the last five, and whether it collapsed."""

    seed: int
    first: float
    last5: float
    truncated_last5: float
    seconds: float
    spread: float = 0.0
    """:func:`answer_spread` of the final policy: 0 when it answers every prompt alike."""

    @property
    def rise(self) -> float:
        return self.last5 - self.first

    @property
    def collapsed(self) -> bool:
        """No reward left, or the policy stopped ending its answers (every sample truncated)."""
        return self.last5 == 0.0 or self.truncated_last5 > _COLLAPSE_TRUNCATED

    def passed(self, min_rise: float) -> bool:
        return self.rise >= min_rise and not self.collapsed


def run_demo(
    output_dir: str,
    num_rollout: int = 100,
    seed: int = 0,
    *,
    progress_bar: bool = True,
    threads: int | None = None,
) -> DemoResult:
    """Warm the format up, train with GRPO, plot; returns the run's :class:`DemoResult`.
    ``threads``: torch CPU threads (default: 2, the README's machine, or fewer cores)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))
    rows = make_addition_dataset(seed)
    # Fan-in init (std hidden_size ** -0.5), not transformers' 0.02: at 0.02 the tiny policy's answer
    # barely depends on the prompt, and GRPO spent a seed-dependent 20-150 rollouts on a plateau
    # (reward ~0.25, the same answer distribution for every prompt) before breaking that symmetry.
    model, tokenizer = tiny_policy("arithmetic", seed=seed, initializer_range=_INIT_STD)
    format_warmup(model, tokenizer, [r["input"] for r in rows], seed=seed)
    trainer = Trainer(
        demo_config(output_dir, num_rollout, seed, progress_bar=progress_bar),
        model=model,
        tokenizer=tokenizer,
        dataset=rows,
        reward_model=addition_reward,
        # DAPO's dynamic sampling, as Miles's check_reward_nonzero_std: a group whose 16 answers all
        # score alike has zero advantage; the rollout over-samples until all 16 groups carry signal.
        # Without it a step with few informative groups still gets a full-size Adam update from
        # them (noise), which is how some seeds lost EOS and collapsed to reward 0.
        dynamic_sampling_filter=check_reward_nonzero_std,
    )
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    spread = answer_spread(model, tokenizer, [r["input"] for r in rows])
    rewards = [m["rollout/reward_mean"] for m in history]
    truncated = [m.get("rollout/truncated_ratio", 0.0) for m in history]
    plot_metrics(Path(output_dir) / "metrics.jsonl", Path(output_dir) / "reward.png")
    return DemoResult(
        seed=seed,
        first=rewards[0],
        last5=sum(rewards[-5:]) / len(rewards[-5:]),
        truncated_last5=sum(truncated[-5:]) / len(truncated[-5:]),
        seconds=time.perf_counter() - start,
        spread=spread,
    )


@torch.no_grad()
def answer_spread(model: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> float:
    """How much the policy's answer depends on the prompt: the mean total-variation distance
    between each prompt's next-token distribution over the ten digits and their average.

    A policy stuck on the plateau the fan-in init removed answers every prompt alike (spread
    ~0.001 after 60 rollouts); one that learns the sums reaches 0.5-0.9."""
    digits = [tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    was_training = model.training
    model.train(False)
    probs = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        logits = model(input_ids=ids).logits[0, -1]
        probs.append(torch.softmax(logits, dim=-1)[digits])
    model.train(was_training)
    table = torch.stack(probs)
    return float((table - table.mean(dim=0)).abs().sum(dim=1).mean() / 2)


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` -> 0..9, ``"0,3,5"`` -> [0, 3, 5]; ranges and lists mix (``"0-2,7"``)."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected e.g. 0-9 or 0,3,5") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} names no seed")
    return seeds


def _run_seed(output_dir: str, num_rollout: int, seed: int, threads: int | None) -> DemoResult:
    return run_demo(output_dir, num_rollout, seed, progress_bar=False, threads=threads)


def _sweep(ns: argparse.Namespace, seeds: list[int]) -> list[DemoResult]:
    dirs = {s: str(Path(ns.output_dir) / f"seed_{s}") for s in seeds}
    if ns.jobs <= 1:
        return [_run_seed(dirs[s], ns.num_rollout, s, None) for s in seeds]
    # Parallel seeds share the cores: each process gets its slice (at least one thread).
    threads = max(1, (os.cpu_count() or 1) // ns.jobs)
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
    with concurrent.futures.ProcessPoolExecutor(ns.jobs, mp_context=spawn) as pool:
        futures = [pool.submit(_run_seed, dirs[s], ns.num_rollout, s, threads) for s in seeds]
        return [f.result() for f in futures]


def _print_table(results: list[DemoResult], min_rise: float) -> None:
    print(f"{'seed':>4}  {'first':>6}  {'last-5':>6}  {'rise':>7}  {'trunc':>5}  {'spread':>6}  {'secs':>5}  result")
    for r in results:
        verdict = "pass" if r.passed(min_rise) else ("FAIL (collapsed)" if r.collapsed else "FAIL")
        print(
            f"{r.seed:>4}  {r.first:>6.3f}  {r.last5:>6.3f}  {r.rise:>+7.3f}  {r.truncated_last5:>5.2f}  "
            f"{r.spread:>6.3f}  {r.seconds:>5.0f}  {verdict}"
        )
    passed = sum(r.passed(min_rise) for r in results)
    print(f"{passed}/{len(results)} seeds rose by >= {min_rise} without collapsing")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m miles_sdk.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", default="outputs/demo", help="where metrics.jsonl and reward.png go")
    parser.add_argument("--num-rollout", type=int, default=100, help="GRPO rollouts (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="one run with this seed (default 0)")
    parser.add_argument(
        "--seeds", type=parse_seeds, default=None, help="run several seeds and print a table: 0-9 or 0,3,5"
    )
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: seeds run at once (processes)")
    parser.add_argument("--min-rise", type=float, default=0.4, help="pass threshold on last-5 minus first")
    ns = parser.parse_args(argv)
    Path(ns.output_dir).mkdir(parents=True, exist_ok=True)
    if ns.seeds is not None:
        results = _sweep(ns, ns.seeds)
        _print_table(results, ns.min_rise)
        return 0 if all(r.passed(ns.min_rise) for r in results) else 1
    result = run_demo(ns.output_dir, ns.num_rollout, ns.seed)
    print(f"first rollout reward: {result.first:.3f}")
    print(f"mean reward of last 5 rollouts: {result.last5:.3f}")
    print(f"rise: {result.rise:+.3f} (target >= {ns.min_rise}) in {result.seconds:.0f} s")
    if result.collapsed:
        print(f"collapsed: {result.truncated_last5:.0%} of the last samples truncated (no EOS)")
    print(f"metrics: {Path(ns.output_dir) / 'metrics.jsonl'}  plot: {Path(ns.output_dir) / 'reward.png'}")
    return 0 if result.passed(ns.min_rise) else 1


if __name__ == "__main__":
    sys.exit(main())
