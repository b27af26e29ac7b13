"""Default rollout metrics, and where metrics go: JSONL, TensorBoard, W&B, a progress bar."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from miles_sdk._untyped_deps import import_wandb
from miles_sdk.config import Config
from miles_sdk.types import Metrics, Sample

__all__ = ["MetricsWriter", "PhaseTimer", "eval_metrics", "rollout_metrics"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def rollout_metrics(args: Config, samples: list[Sample], prefix: str = "rollout") -> Metrics:
    """Reward mean/std, response length, truncation and failure counts of one rollout."""
    scored = [s for s in samples if s.status is not Sample.Status.FAILED and s.reward is not None]
    rewards = [s.get_reward_value(args.reward_key) for s in scored]
    lengths = [float(s.response_length) for s in samples]
    out: Metrics = {
        f"{prefix}/num_samples": float(len(samples)),
        f"{prefix}/reward_mean": _mean(rewards),
        f"{prefix}/reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        f"{prefix}/response_len_mean": _mean(lengths),
        f"{prefix}/response_len_max": max(lengths, default=0.0),
        f"{prefix}/truncated_ratio": _mean([float(s.status is Sample.Status.TRUNCATED) for s in samples]),
        f"{prefix}/aborted": float(sum(s.status is Sample.Status.ABORTED for s in samples)),
        f"{prefix}/reward_failed": float(sum(s.status is Sample.Status.FAILED for s in samples)),
        f"{prefix}/removed": float(sum(s.remove_sample for s in samples)),
    }
    return out


def eval_metrics(args: Config, data: dict[str, Any]) -> Metrics:
    """Per eval dataset: mean reward and truncation rate."""
    out: Metrics = {}
    for name, result in data.items():
        rewards = [float(r) for r in result["rewards"]]
        out[f"eval/{name}"] = _mean(rewards)
        out[f"eval/{name}/truncated_ratio"] = _mean([float(t) for t in result["truncated"]])
    return out


class PhaseTimer:
    """Wall time per phase of a step: ``with timer("generate"): ...`` -> ``perf/generate_time``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> Metrics:
        return {f"perf/{phase}_time": seconds for phase, seconds in self.times.items()}


class MetricsWriter:
    """Appends one JSON line per step to ``output_dir/metrics.jsonl``; mirrors to TensorBoard/W&B."""

    def __init__(self, args: Config) -> None:
        self.args = args
        self.output_dir = Path(args.output_dir) if args.output_dir else None
        self._file: IO[str] | None = None
        self._tb: Any = None
        self._wandb: Any = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._file = (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if args.use_tensorboard:
            self._tb = _tensorboard_writer(args, self.output_dir)
        if args.use_wandb:
            self._wandb = _wandb_run(args)

    @property
    def jsonl_path(self) -> Path | None:
        return self.output_dir / "metrics.jsonl" if self.output_dir else None

    def write(self, step: int, metrics: Metrics) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if self._file is not None:
            self._file.write(json.dumps({"step": step, **clean}) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(args: Config, output_dir: Path | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "use_tensorboard needs the `tensorboard` extra: pip install 'miles_sdk[tensorboard]'"
        ) from exc
    log_dir = (output_dir or Path("runs")) / "tensorboard" / (args.tb_project_name or "miles_sdk")
    return SummaryWriter(log_dir=str(log_dir))


def _wandb_run(args: Config) -> Any:
    try:
        wandb = import_wandb()
    except ImportError as exc:
        raise ImportError("use_wandb needs the `wandb` extra: pip install 'miles_sdk[wandb]'") from exc
    return wandb.init(project=args.wandb_project or "miles_sdk", group=args.wandb_group)
