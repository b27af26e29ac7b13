"""``fit()``'s evaluation: written once, and not at all when eval_rollout_log_fn takes it over (issue 13.11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from miles_sdk import Config, Trainer
from miles_sdk.demo.task import addition_reward
from miles_sdk.hooks import DataSource
from miles_sdk.testing import small_config, tiny_policy
from miles_sdk.types import Metrics, RolloutFnEvalOutput

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


def _eval_fn(args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False) -> Any:
    assert evaluation
    return RolloutFnEvalOutput(data={"toy": {"rewards": [1.0, 0.0], "truncated": [False, False], "samples": []}})


def _rows_with_eval(output_dir: Path, name: str = "tiny") -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if f"eval/{name}" in r]


def _fit(tmp_path: Path, **trainer_kwargs: Any) -> Trainer:
    model, tok = tiny_policy("unit", seed=0)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    # eval every 2 rollouts and train 1: the only evaluation is the one before training
    config = small_config(
        output_dir=str(tmp_path), eval_interval=2, num_rollout=1, eval_prompt_data=["tiny", str(eval_file)]
    )
    trainer = Trainer(
        config, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward, **trainer_kwargs
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


def test_eval_before_training_is_written_once(tmp_path: Path) -> None:
    _fit(tmp_path)
    rows = _rows_with_eval(tmp_path)
    assert len(rows) == 1, rows
    assert rows[0]["step"] == 0


def test_eval_fn_alone_is_evaluated_before_training(tmp_path: Path) -> None:
    """As in Miles, eval before training needs eval_interval, not eval datasets: an eval_fn is enough."""
    model, tok = tiny_policy("unit", seed=0)
    config = small_config(output_dir=str(tmp_path), eval_interval=2, num_rollout=1)
    trainer = Trainer(
        config, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward, eval_fn=_eval_fn
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = _rows_with_eval(tmp_path, "toy")
    assert [(r["step"], r["eval/toy"]) for r in rows] == [(0, 0.5)]


def test_eval_log_fn_returning_true_replaces_the_default_logging(tmp_path: Path) -> None:
    seen: list[tuple[int, Metrics]] = []

    def log_fn(rollout_id: int, args: Config, data: dict[str, Any], extra_metrics: Metrics | None) -> bool:
        seen.append((rollout_id, dict(extra_metrics or {})))
        return True

    _fit(tmp_path, eval_rollout_log_fn=log_fn)
    assert len(seen) == 1  # the hook ran once, for the evaluation before training
    assert _rows_with_eval(tmp_path) == []  # and it took the logging over: nothing in metrics.jsonl
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0]  # the training step is still logged
