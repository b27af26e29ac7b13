"""Shim of ``miles.rollout``: ``sglang_rollout``, ``base_types``, ``data_source``, ``filter_hub``, ``rm_hub``."""
