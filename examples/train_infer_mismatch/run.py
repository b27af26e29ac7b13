"""Train the tiny CPU policy with MIS on a simulated mismatch: ``python -m examples.train_infer_mismatch.run``."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from examples._common import RunOptions, parse_run_args, tiny_config, train_tiny
from examples.train_infer_mismatch.mis import MIS_CONFIG
from examples.train_infer_mismatch.noisy_engine import NoisyLogProbEngine
from miles_sdk.config import Config
from miles_sdk.demo.task import addition_reward, make_addition_dataset
from miles_sdk.engines.base import InferenceEngine
from miles_sdk.engines.embedded import EmbeddedEngine

__all__ = ["MISMATCH_METRICS", "TIS_PATH", "build_config", "main"]

TIS_PATH = "examples.train_infer_mismatch.mis.compute_mis_weights"
MISMATCH_METRICS = (
    "train/mis_kl",
    "train/mis_tis_truncate_fraction",
    "train/mis_rs_mask_fraction_low",
    "train/mis_rs_mask_fraction_high",
    "train/mis_masked_fraction",
    "train/mis_ess",
)
"""The metrics ``main`` prints for each step (all of them go to metrics.jsonl)."""


def build_config(opts: RunOptions) -> Config:
    """GRPO with MIS on (Miles's mis.yaml settings) and the TIS hook given by its Miles path."""
    return tiny_config(
        opts,
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        rollout_max_response_len=4,
        custom_tis_function_path=TIS_PATH,
        rollout_shuffle=True,
        **MIS_CONFIG,
    )


def noisy_engine(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> InferenceEngine:
    """The embedded engine, its reported log-probs perturbed (sigma 0.5: about 1 token in 6
    gets a ratio outside [0.5, 2] and is masked)."""
    return NoisyLogProbEngine(EmbeddedEngine(model, tokenizer), sigma=0.5, seed=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Train with MIS and print the mismatch metrics of each step; returns 0."""
    opts = parse_run_args(argv, name="train_infer_mismatch", description=__doc__)
    history = train_tiny(
        build_config(opts),
        opts,
        dataset=make_addition_dataset(opts.seed),
        engine_factory=noisy_engine,
        reward_model=addition_reward,
    )
    for step, metrics in enumerate(history):
        shown = "  ".join(
            f"{k.removeprefix('train/')}={metrics.get(k, math.nan):.4f}" for k in MISMATCH_METRICS
        )
        print(f"rollout {step}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
