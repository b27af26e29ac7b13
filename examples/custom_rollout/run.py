"""Train the tiny CPU policy with the best-of-n rejection rollout: ``python -m examples.custom_rollout.run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples._common import parse_run_args, tiny_config, train_tiny
from examples.custom_rollout.rollout import best_of_n_rollout
from miles_sdk.demo.task import addition_reward, make_addition_dataset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Train on single-digit addition with the custom rollout function; returns 0."""
    opts = parse_run_args(argv, name="custom_rollout", description=__doc__)
    config = tiny_config(
        opts, rollout_batch_size=2, n_samples_per_prompt=4, rollout_max_response_len=3, rollout_shuffle=True
    )
    train_tiny(
        config,
        opts,
        dataset=make_addition_dataset(opts.seed),
        rollout_fn=best_of_n_rollout,
        reward_model=addition_reward,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
