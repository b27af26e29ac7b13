"""Default rollout metrics, and where metrics go: JSONL, TensorBoard, W&B, a progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from miles_sdk._untyped_deps import import_wandb
from miles_sdk.config import Config
from miles_sdk.logging.run_config import run_config, write_json_atomically
from miles_sdk.types import Metrics, Sample

__all__ = ["MetricsWriter", "PhaseTimer", "eval_metrics", "rollout_metrics"]

logger = logging.getLogger(__name__)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def reward_stats(rewards: list[float], prefix: str = "rollout") -> Metrics:
    """Mean and population std of scalar rewards."""
    return {
        f"{prefix}/reward_mean": _mean(rewards),
        f"{prefix}/reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
    }


def rollout_metrics(args: Config, samples: list[Sample], prefix: str = "rollout") -> Metrics:
    """Reward mean/std, response length, truncation and failure counts of one rollout.

    Dict rewards without ``reward_key`` are not scalars yet: a reward post-process turns them
    into numbers (on-policy distillation does), so their mean/std are left out here and the
    trainer reports them after the post-process.
    """
    scored = [s for s in samples if s.status is not Sample.Status.FAILED and s.reward is not None]
    if args.reward_key is None and any(isinstance(s.reward, dict) for s in scored):
        rewards: list[float] | None = None
    else:
        rewards = [s.get_reward_value(args.reward_key) for s in scored]
    lengths = [float(s.response_length) for s in samples]
    out: Metrics = {
        f"{prefix}/num_samples": float(len(samples)),
        **(reward_stats(rewards, prefix) if rewards is not None else {}),
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
        self.current: str | None = None
        """The phase running now; after an exception, the phase it left (an OOM report names it)."""

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        self.current = phase
        try:
            yield
            self.current = None
        finally:
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> Metrics:
        return {f"perf/{phase}_time": seconds for phase, seconds in self.times.items()}


class MetricsWriter:
    """Writes one JSON line per step to ``output_dir/metrics.jsonl``; mirrors to TensorBoard/W&B.

    One file per run. A run from scratch that finds a ``metrics.jsonl`` from an earlier run in
    its output folder moves it aside to ``metrics.run<k>.jsonl`` (logged), so step ids that restart
    at 0 never mix with the old rows. A resumed run (``--load``) keeps the file and cuts it back
    to the checkpoint's step: the rows of the steps it will replay are dropped, not duplicated.
    """

    def __init__(self, args: Config) -> None:
        self.args = args
        self.output_dir = Path(args.output_dir) if args.output_dir else None
        self._file: IO[str] | None = None
        self._tb: Any = None
        self._wandb: Any = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if args.use_tensorboard:
            self._tb = _tensorboard_writer(args, self.output_dir)
        if args.use_wandb:
            self._wandb = _wandb_run(args)

    @property
    def jsonl_path(self) -> Path | None:
        return self.output_dir / "metrics.jsonl" if self.output_dir else None

    @property
    def config_path(self) -> Path | None:
        return self.output_dir / "config.json" if self.output_dir else None

    def write_run_config(self, resolved: dict[str, Any]) -> Path | None:
        """``config.json`` beside ``metrics.jsonl``: the run's settings, what the Trainer resolved
        from them and the library versions (:mod:`miles_sdk.logging.run_config`)."""
        path = self.config_path
        if path is None:
            return None
        write_json_atomically(path, run_config(self.args, resolved))
        return path

    @property
    def started(self) -> bool:
        """Whether this run's JSONL file is open (by :meth:`start_new_run` or :meth:`resume_at`)."""
        return self._file is not None

    def start_new_run(self) -> Path | None:
        """Open a fresh ``metrics.jsonl``; an earlier run's file is moved aside. Returns where it
        went (None when there was nothing to move)."""
        path = self.jsonl_path
        if path is None:
            return None
        self._close_file()
        moved: Path | None = None
        if path.exists() and path.stat().st_size > 0:
            k = 1
            while (path.parent / f"metrics.run{k}.jsonl").exists():
                k += 1
            moved = path.parent / f"metrics.run{k}.jsonl"
            path.rename(moved)
            old_config = self.config_path
            if old_config is not None and old_config.exists():  # that run's settings go with its metrics
                old_config.rename(path.parent / f"config.run{k}.json")
            logger.warning(
                "%s held metrics of an earlier run: moved to %s; this run writes a new %s (pass --load "
                "to resume that run and continue its file instead)",
                path.parent,
                moved.name,
                path.name,
            )
        self._file = path.open("w", encoding="utf-8")
        return moved

    def resume_at(self, step: int) -> int:
        """Continue the file of the run being resumed at ``step``: rows with ``step`` >= it (the
        steps that will run again) are dropped, as is a line torn by a kill. Returns how many
        rows were dropped."""
        path = self.jsonl_path
        if path is None:
            return 0
        self._close_file()
        kept: list[str] = []
        dropped = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = _parse_row(line)
                if row is not None and row < step:
                    kept.append(line + "\n")
                elif line.strip():
                    dropped += 1
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        if dropped:
            logger.info(
                "resuming at step %d: %s keeps %d rows and drops %d rows of steps that run again",
                step,
                path,
                len(kept),
                dropped,
            )
        self._file = path.open("a", encoding="utf-8")
        return dropped

    def write(self, step: int, metrics: Metrics) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if self._file is None and self.output_dir is not None:
            self.start_new_run()
        if self._file is not None:
            self._file.write(json.dumps({"step": step, **clean}) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
        if self._tb is not None:
            self._tb.close()


def _parse_row(line: str) -> int | None:
    """The ``step`` of a JSONL row, or None for a blank, torn or foreign line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) else None


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
    # The run's settings go to W&B's config too, as every RL library records them there.
    return wandb.init(
        project=args.wandb_project or "miles_sdk", group=args.wandb_group, config=run_config(args, {})["config"]
    )
