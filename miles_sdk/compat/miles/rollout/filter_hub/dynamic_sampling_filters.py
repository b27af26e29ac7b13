"""Shim of ``miles.rollout.filter_hub.dynamic_sampling_filters``: the stock DAPO filters.

``check_reward_nonzero_std`` keeps a group whose rewards differ (reason ``zero_std_{reward}``
otherwise); ``check_no_aborted`` drops a group with an aborted sample. Both are miles_sdk's.
"""

from __future__ import annotations

from miles_sdk.rollout.filters import check_no_aborted, check_reward_nonzero_std

__all__ = ["check_no_aborted", "check_reward_nonzero_std"]
