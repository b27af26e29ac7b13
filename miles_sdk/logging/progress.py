"""Progress bar over rollout steps: what a user watches to tell that a run learns.

The GRPO loss is ~0 by construction (advantages sum to zero within a group), so the bar shows
the reward, the response length, the gradient norm, the KL, the step time and, when any reward
failed, the failed fraction; never the loss.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Self

from miles_sdk.config import Config
from miles_sdk.types import Metrics

__all__ = ["Progress", "progress_fields"]

logger = logging.getLogger(__name__)


def progress_fields(metrics: Metrics) -> dict[str, str]:
    """The bar's ``name -> formatted value`` for one step's metrics (absent metrics are left out)."""
    fields: dict[str, str] = {}

    def show(name: str, key: str, fmt: str) -> None:
        if key in metrics:
            fields[name] = format(float(metrics[key]), fmt)

    show("reward", "rollout/reward_mean", ".3f")
    show("len", "rollout/response_len_mean", ".1f")
    show("grad", "train/grad_norm", ".3g")
    if "train/kl_loss" in metrics:
        show("kl", "train/kl_loss", ".3g")  # KL to the reference model (use_kl_loss)
    else:
        show("kl_old", "train/approx_kl", ".3g")  # no reference: how far the update moved from pi_old
    failed = float(metrics.get("rollout/reward_failed", 0.0))
    if failed > 0:
        total = float(metrics.get("rollout/num_samples", 0.0)) or failed
        frac = float(metrics.get("rollout/reward_failed_frac", failed / total))  # of finished samples
        fields["failed"] = f"{frac:.2f}"
    seconds = sum(v for k, v in metrics.items() if k.startswith("perf/") and k.endswith("_time"))
    if seconds:
        fields["s_per_step"] = f"{seconds:.1f}"
    for key, value in metrics.items():
        if key.startswith("eval/") and key.count("/") == 1:
            fields[key.removeprefix("eval/")] = f"{float(value):.3f}"
    return fields


class Progress:
    """A tqdm bar when ``args.progress_bar``; one log line per step otherwise."""

    def __init__(self, args: Config, *, total: int, initial: int = 0) -> None:
        self._bar: Any = None
        self._step = initial
        if args.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="rollout", unit="step", dynamic_ncols=True)

    def update(self, metrics: Metrics) -> None:
        fields = progress_fields(metrics)
        if self._bar is None:
            # Without a bar (logs, CI) one line per step keeps a record of the run.
            self._step += 1
            logger.info("rollout %d: %s", self._step, " ".join(f"{k}={v}" for k, v in fields.items()))
            return
        self._bar.set_postfix(fields, refresh=False)
        self._bar.update(1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
