"""``config.json`` beside ``metrics.jsonl``: every setting of the run and what the Trainer decided
from them (the device, the backend, ``gradient_checkpointing="auto"``'s answer, the engine), with
the library versions. A curve can then be read against what actually ran, not what the command
line seemed to ask for."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from miles_sdk.config import Config

__all__ = ["run_config", "write_json_atomically"]

_PACKAGES = ("miles_sdk", "torch", "transformers", "peft", "ray", "sglang")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _json_safe(value: Any) -> Any:
    """Settings as JSON: containers kept, anything else (a path, an enum) as its string."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def run_config(args: Config, resolved: dict[str, Any]) -> dict[str, Any]:
    """The record written to ``config.json``: ``config`` (every field, as given), ``resolved``
    (what the Trainer decided from them) and ``versions``."""
    return {
        "config": _json_safe(attrs.asdict(args, recurse=False)),
        "resolved": _json_safe(resolved),
        "versions": _versions(),
    }


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """``data`` to ``path`` through a temporary file: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
