"""Shim of ``miles.utils.types``: our :class:`~miles_sdk.types.Sample` is Miles's Sample.

It has Miles's fields and ``Sample.Status``; ``sample.get_reward_value(args)`` reads
``args.reward_key`` as in Miles.
"""

from __future__ import annotations

from miles_sdk.types import RewardSpec, Sample

__all__ = ["RewardSpec", "Sample"]
