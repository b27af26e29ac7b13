"""Progress bar over rollout steps: rollout id, reward and seconds per step."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from miles_sdk.config import Config
from miles_sdk.types import Metrics

__all__ = ["Progress"]


class Progress:
    """A tqdm bar when ``args.progress_bar``; silent otherwise."""

    def __init__(self, args: Config, *, total: int, initial: int = 0) -> None:
        self._bar: Any = None
        if args.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="rollout", unit="step", dynamic_ncols=True)

    def update(self, metrics: Metrics) -> None:
        if self._bar is None:
            return
        seconds = sum(v for k, v in metrics.items() if k.startswith("perf/") and k.endswith("_time"))
        self._bar.set_postfix(
            reward=f"{metrics.get('rollout/reward_mean', float('nan')):.3f}",
            loss=f"{metrics.get('train/loss', float('nan')):.4f}",
            s_per_step=f"{seconds:.1f}",
        )
        self._bar.update(1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
