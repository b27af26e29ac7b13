"""Shim of ``miles.rollout.filter_hub``: ``base_types``, ``dynamic_sampling_filters``."""
