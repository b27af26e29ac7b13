"""The demo task: single-digit addition with a verifiable reward.

Prompts are ``"a+b="`` with ``a + b <= 9``; the answer is one digit. The reward is 1.0 when the
response (up to EOS, stripped) equals the sum, else 0.0.
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
    """1.0 for the exact sum, else 0.0."""
    return 1.0 if sample.response.strip() == (sample.label or "").strip() else 0.0
