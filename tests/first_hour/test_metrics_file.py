"""metrics.jsonl holds one run: a reused output folder gets a new file (the old one moved aside),
and a resumed run cuts the file back to its checkpoint instead of appending replayed steps
(issue 14 item 10, issue 16 item 5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from miles_sdk import Config, Trainer
from miles_sdk.demo.task import addition_reward
from miles_sdk.logging import MetricsWriter
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _run(config: Config, steps: int) -> None:
    model, tok = tiny_policy("unit", seed=0)
    with Trainer(config, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward) as trainer:
        for _ in range(steps):
            trainer.step()


def test_a_second_run_in_the_same_folder_gets_its_own_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _run(small_config(output_dir=str(tmp_path)), steps=2)
    with caplog.at_level(logging.WARNING):
        _run(small_config(output_dir=str(tmp_path)), steps=1)
    assert _steps(tmp_path / "metrics.jsonl") == [0]  # old code: [0, 1, 0]
    assert _steps(tmp_path / "metrics.run1.jsonl") == [0, 1]
    assert any("moved to metrics.run1.jsonl" in r.getMessage() for r in caplog.records)


def test_resume_cuts_the_file_back_to_the_checkpoint(tmp_path: Path) -> None:
    config = small_config(output_dir=str(tmp_path / "out"), save=str(tmp_path / "ckpt"), save_interval=2)
    _run(config, steps=3)  # checkpoint after steps 0-1; step 2 ran, then the run "died"
    assert _steps(tmp_path / "out" / "metrics.jsonl") == [0, 1, 2]
    _run(config.replace(load=str(tmp_path / "ckpt")), steps=2)  # replays step 2, then step 3
    assert _steps(tmp_path / "out" / "metrics.jsonl") == [0, 1, 2, 3]  # old code: [0, 1, 2, 2, 3]
    assert not list((tmp_path / "out").glob("metrics.run*.jsonl"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["resolved"]["first_rollout_id"] == 2


def test_resume_drops_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1.0}\n{"step": 1, "a": 2.0}\n{"step": 2, "a"')
    writer = MetricsWriter(small_config(output_dir=str(tmp_path)))
    assert writer.resume_at(2) == 1
    writer.write(2, {"a": 3.0})
    writer.close()
    assert _steps(path) == [0, 1, 2]


def test_config_json_records_the_settings_and_what_the_trainer_decided(tmp_path: Path) -> None:
    """config.json beside metrics.jsonl: every setting as given, what the Trainer resolved from
    them (gradient_checkpointing='auto' -> off on the CPU, the backend, the engine) and the
    library versions; a second run in the folder moves the first one's aside with its metrics."""
    _run(small_config(output_dir=str(tmp_path), lr=3e-4), steps=1)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["lr"] == 3e-4 and record["config"]["gradient_checkpointing"] == "auto"
    assert record["config"]["output_dir"] == str(tmp_path)
    assert record["resolved"] == {
        "device": "cpu",
        "train_backend": "TorchBackend",
        "gradient_checkpointing": False,
        "engine": "EmbeddedEngine",
        "first_rollout_id": 0,
    }
    assert {"python", "miles_sdk", "torch"} <= set(record["versions"])
    _run(small_config(output_dir=str(tmp_path), lr=1e-4), steps=1)
    assert json.loads((tmp_path / "config.run1.json").read_text())["config"]["lr"] == 3e-4
    assert json.loads((tmp_path / "config.json").read_text())["config"]["lr"] == 1e-4
