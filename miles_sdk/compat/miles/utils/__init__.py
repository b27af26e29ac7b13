"""Shim of ``miles.utils``: ``types``, ``http_utils``, ``misc``, ``async_utils``."""
