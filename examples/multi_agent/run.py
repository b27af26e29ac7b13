"""Train the tiny CPU policy as solver and critic: ``python -m examples.multi_agent.run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples._common import parse_run_args, tiny_config, train_tiny
from examples.multi_agent.hooks import generate, reward_fn
from miles_sdk.demo.task import make_addition_dataset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Train with the two-agent generate function and the batched reward; returns 0."""
    opts = parse_run_args(argv, name="multi_agent", description=__doc__)
    config = tiny_config(
        opts,
        rollout_batch_size=2,
        n_samples_per_prompt=2,
        rollout_max_response_len=4,
        group_rm=True,  # the batched reward_fn scores each group's solvers and critics in one call
        rollout_shuffle=True,
    )
    # Each prompt yields a solver and a critic sample: a rollout holds 2 * 2 * 2 = 8 samples, two
    # optimizer steps of the default global batch size (rollout_batch_size * n_samples_per_prompt).
    train_tiny(
        config, opts, dataset=make_addition_dataset(opts.seed), generate_fn=generate, reward_model=reward_fn
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
