"""Train the tiny CPU policy on the Search-R1 example: ``python -m examples.search_r1.run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from examples._common import parse_run_args, tiny_config, train_tiny
from examples.search_r1.hooks import generate, make_prompt, reward_fn
from examples.search_r1.retriever import QUESTIONS

__all__ = ["dataset", "main"]


def dataset() -> list[dict[str, Any]]:
    """One row per question: the Search-R1 prompt and the answer as label."""
    return [{"input": make_prompt(question), "label": answer} for question, answer in QUESTIONS]


def main(argv: Sequence[str] | None = None) -> int:
    """Train with the search generate function and the exact-match reward; returns 0."""
    opts = parse_run_args(argv, name="search_r1", description=__doc__)
    config = tiny_config(
        opts,
        rollout_batch_size=2,
        n_samples_per_prompt=2,
        rollout_max_response_len=24,
        rollout_shuffle=True,
    )
    train_tiny(config, opts, dataset=dataset(), generate_fn=generate, reward_model=reward_fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
