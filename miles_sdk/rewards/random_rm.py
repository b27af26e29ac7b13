"""``rm_type=random`` and ``rm_type=deterministic_random``: rewards for plumbing tests.

``deterministic_random`` hashes the sample so a rerun sees the same rewards: the first byte of
``sha256(str(tokens) + response)``, mod 2.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["deterministic_random_reward", "random_reward"]


def random_reward(rng: random.Random | None = None) -> float:
    """0.0 or 1.0 with equal odds (from ``rng``, else the global ``random`` state)."""
    return float(rng.randint(0, 1) if rng is not None else random.randint(0, 1))


def deterministic_random_reward(tokens: list[int], response: str) -> float:
    """0.0 or 1.0, a fixed function of the token ids and the response text."""
    digest = hashlib.sha256((str(tokens) + response).encode()).digest()
    return float(digest[0] % 2)
