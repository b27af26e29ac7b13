"""Shim of ``miles.backends.training_utils``: ``parallel`` (this process's ranks) and ``cp_utils``."""
