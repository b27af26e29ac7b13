"""Progress bar over rollout steps: rollout id, reward and seconds per step."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Self

from miles_sdk.config import Config
from miles_sdk.types import Metrics

__all__ = ["Progress"]

logger = logging.getLogger(__name__)


class Progress:
    """A tqdm bar when ``args.progress_bar``; silent otherwise."""

    def __init__(self, args: Config, *, total: int, initial: int = 0) -> None:
        self._bar: Any = None
        self._step = initial
        if args.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="rollout", unit="step", dynamic_ncols=True)

    def update(self, metrics: Metrics) -> None:
        seconds = sum(v for k, v in metrics.items() if k.startswith("perf/") and k.endswith("_time"))
        reward = metrics.get("rollout/reward_mean", float("nan"))
        loss = metrics.get("train/loss", float("nan"))
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/") and k.count("/") == 1}
        if self._bar is None:
            # Without a bar (logs, CI) one line per step keeps a record of the run.
            self._step += 1
            extra = "".join(f" {k}={v:.3f}" for k, v in evals.items())
            logger.info("rollout %d: reward=%.3f loss=%.4f %.1fs%s", self._step, reward, loss, seconds, extra)
            return
        self._bar.set_postfix(
            reward=f"{reward:.3f}",
            loss=f"{loss:.4f}",
            s_per_step=f"{seconds:.1f}",
            **{k.removeprefix("eval/"): f"{v:.3f}" for k, v in evals.items()},
        )
        self._bar.update(1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
