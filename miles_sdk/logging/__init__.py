"""Stage 9 of the loop: metrics, progress, plots."""

from miles_sdk.logging.metrics import MetricsWriter, PhaseTimer, eval_metrics, rollout_metrics
from miles_sdk.logging.plots import plot_metrics

__all__ = ["MetricsWriter", "PhaseTimer", "eval_metrics", "plot_metrics", "rollout_metrics"]
