"""A PNG of reward (and loss) per step from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_metrics"]


_DEFAULT_KEYS = ("rollout/reward_mean", "train/entropy_loss", "train/loss")


def plot_metrics(jsonl_path: Path, png_path: Path, keys: tuple[str, ...] = _DEFAULT_KEYS) -> Path:
    """Plot ``keys`` against step, one panel each; keys absent from the file are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    present = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(len(present) or 1, 1, figsize=(7, 3 * max(len(present), 1)), squeeze=False)
    for ax, key in zip(axes[:, 0], present):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_xlabel("rollout step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
