"""Checkpoints: atomic directories holding model, optimizer, data source, RNG states and step.

A checkpoint is written to ``<dir>/.tmp-rollout_<id>`` and renamed to ``<dir>/rollout_<id>`` only
once complete, so a crash mid-write never replaces a good checkpoint. ``<dir>/latest`` names the
newest complete one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

_STATE_FILE = "state.pt"


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], rollout_id: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/rollout_<rollout_id>``; returns its path."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"rollout_{rollout_id}"
    tmp = root / f".tmp-rollout_{rollout_id}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / _STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(str(rollout_id), encoding="utf-8")
    os.replace(latest_tmp, root / "latest")
    return final


def latest_checkpoint(directory: str | os.PathLike[str]) -> int | None:
    """The rollout id of the newest complete checkpoint in ``directory``, or None."""
    root = Path(directory)
    marker = root / "latest"
    if marker.exists():
        return int(marker.read_text(encoding="utf-8").strip())
    ids = [int(p.name.split("_", 1)[1]) for p in root.glob("rollout_*") if (p / _STATE_FILE).exists()]
    return max(ids) if ids else None


def load_checkpoint(directory: str | os.PathLike[str], rollout_id: int | None = None) -> dict[str, Any]:
    """Read the checkpoint for ``rollout_id`` (the latest when None)."""
    root = Path(directory)
    if rollout_id is None:
        rollout_id = latest_checkpoint(root)
        if rollout_id is None:
            raise FileNotFoundError(f"no checkpoint found in {root}")
    path = root / f"rollout_{rollout_id}" / _STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state
