"""Errors shared by the Config and the modules that build it (the CLI parser), kept in a leaf
module so neither has to import the other."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad or contradictory setting. The message names the setting(s) involved."""
