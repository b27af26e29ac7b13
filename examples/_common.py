"""Plumbing shared by the examples' ``run.py`` scripts: flags, the tiny CPU policy, a summary.

Kept out of the hook files on purpose: a hook file should read like the one a Miles user ships,
with nothing but the hooks in it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.engines.base import InferenceEngine
from miles_sdk.testing import tiny_policy
from miles_sdk.trainer import Trainer
from miles_sdk.types import Metrics

__all__ = ["EngineFactory", "RunOptions", "parse_run_args", "tiny_config", "train_tiny"]

EngineFactory = Callable[[PreTrainedModel, PreTrainedTokenizerFast], InferenceEngine]
"""Builds the inference engine from the policy and its tokenizer (default: the embedded engine)."""


@attrs.frozen(kw_only=True)
class RunOptions:
    """The flags every example's ``run.py`` takes."""

    num_rollout: int
    output_dir: str
    seed: int
    preset: str
    """``tiny_policy`` size preset: "unit" (fastest) or "arithmetic" (can learn a little)."""
    switches: frozenset[str] = frozenset()
    """The example's own on/off flags that were given (``--cli`` -> ``"cli"``)."""


def parse_run_args(
    argv: Sequence[str] | None,
    *,
    name: str,
    description: str | None,
    num_rollout: int = 4,
    switches: Mapping[str, str] | None = None,
) -> RunOptions:
    """Parse ``--num-rollout``, ``--output-dir``, ``--seed``, ``--preset`` and the example's own
    ``switches`` (flag name -> help) for example ``name`` (``examples/<name>/``); create the
    output dir."""
    parser = argparse.ArgumentParser(
        prog=f"python -m examples.{name}.run",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-rollout", type=int, default=num_rollout, help="rollout steps to train")
    parser.add_argument("--output-dir", default=f"outputs/examples/{name}", help="metrics.jsonl goes here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset", default="unit", choices=("unit", "arithmetic", "small"), help="tiny_policy size preset"
    )
    for flag, help_text in (switches or {}).items():
        parser.add_argument(f"--{flag}", action="store_true", help=help_text)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    if ns.num_rollout < 1:
        parser.error(f"--num-rollout must be >= 1, got {ns.num_rollout}")
    Path(ns.output_dir).mkdir(parents=True, exist_ok=True)
    given = frozenset(flag for flag in (switches or {}) if getattr(ns, flag.replace("-", "_")))
    return RunOptions(
        num_rollout=ns.num_rollout, output_dir=ns.output_dir, seed=ns.seed, preset=ns.preset, switches=given
    )


def tiny_config(opts: RunOptions, **settings: Any) -> Config:
    """A CPU Config for the tiny policy; ``settings`` are Miles argument names (they win)."""
    base: dict[str, Any] = {
        "num_rollout": opts.num_rollout,
        "output_dir": opts.output_dir,
        "seed": opts.seed,
        "rollout_seed": opts.seed,
        "device": "cpu",
        "label_key": "label",
        "lr": 1e-3,
        "progress_bar": False,
    }
    base.update(settings)
    return Config(**base)


def train_tiny(
    config: Config,
    opts: RunOptions,
    *,
    dataset: list[dict[str, Any]],
    engine_factory: EngineFactory | None = None,
    **hooks: Any,
) -> list[Metrics]:
    """Train the tiny policy with ``hooks`` (Trainer keyword arguments); print one line per step."""
    torch.manual_seed(opts.seed)
    model, tokenizer = tiny_policy(opts.preset, seed=opts.seed)
    engine = engine_factory(model, tokenizer) if engine_factory is not None else None
    trainer = Trainer(config, model=model, tokenizer=tokenizer, engine=engine, dataset=dataset, **hooks)
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    for step, metrics in enumerate(history):
        reward = metrics.get("rollout/reward_mean", math.nan)
        loss = metrics.get("train/loss", math.nan)
        print(f"rollout {step}: reward_mean={reward:.3f} loss={loss:.4f}")
    print(f"metrics: {Path(opts.output_dir) / 'metrics.jsonl'}")
    return history
