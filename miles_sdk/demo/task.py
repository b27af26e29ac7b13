"""The demo task: single-digit addition with a verifiable reward.

Prompts are ``"a+b="`` with ``a + b <= 9``; the answer is one digit. The reward is 1.0 when the
response (up to the first special token, stripped) equals the sum, else 0.0.
"""

from __future__ import annotations

import random
from typing import Any

from miles_sdk.config import Config
from miles_sdk.types import Sample

__all__ = ["addition_reward", "make_addition_dataset"]


def make_addition_dataset(seed: int = 0) -> list[dict[str, Any]]:
    """Every ``a+b=`` with single digits and a one-digit sum (55 rows), shuffled."""
    rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(10) for b in range(10) if a + b <= 9]
    random.Random(seed).shuffle(rows)
    return rows


async def addition_reward(args: Config, sample: Sample) -> float:
    """1.0 for the exact sum, else 0.0. The response text keeps the EOS marker (Miles's default
    ``rollout_skip_special_tokens=False``), so the answer is what precedes the first special token."""
    if sample.label is None:
        raise ValueError(f"sample index={sample.index} has no label; set label_key")
    answer = sample.response.split("<|", 1)[0].strip()
    return 1.0 if answer == str(sample.label).strip() else 0.0
