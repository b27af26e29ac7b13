"""Train the tiny CPU policy on single-digit addition with Dr.GRPO: ``python -m examples.dr_grpo.run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples._common import RunOptions, parse_run_args, tiny_config, train_tiny
from miles_sdk.config import Config
from miles_sdk.demo.task import addition_reward, make_addition_dataset

__all__ = ["REDUCER_PATH", "build_config", "main"]

REDUCER_PATH = "examples.dr_grpo.reducer.get_pg_loss_reducer"


def build_config(opts: RunOptions) -> Config:
    """GRPO with Dr.GRPO's two changes: the constant-divisor reducer (given by its Miles path,
    as a launch script would) and no std normalisation of group rewards."""
    return tiny_config(
        opts,
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        rollout_max_response_len=3,
        custom_pg_loss_reducer_function_path=REDUCER_PATH,
        grpo_std_normalization=False,
        rollout_shuffle=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train with the Dr.GRPO reducer on the demo's addition task; returns 0."""
    opts = parse_run_args(argv, name="dr_grpo", description=__doc__)
    train_tiny(
        build_config(opts), opts, dataset=make_addition_dataset(opts.seed), reward_model=addition_reward
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
