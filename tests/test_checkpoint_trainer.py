"""Checkpoints through the Trainer: --load of a stranded folder, the save-folder check, RNG seeding (issue 16.1, 16.3, 16.4)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from miles_sdk import Trainer
from miles_sdk.checkpoint import CheckpointError, NoCheckpointError
from miles_sdk.demo.task import addition_reward
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


def _trainer(tmp_path: Path, **overrides: Any) -> Trainer:
    model, tok = tiny_policy("unit", seed=3)
    cfg = small_config(output_dir=str(tmp_path / "out"), num_rollout=4, **overrides)
    return Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward)


@pytest.mark.parametrize("leftover", ["empty folder", "killed during the first save"])
def test_load_without_a_complete_checkpoint_starts_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, leftover: str
) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if leftover == "killed during the first save":
        partial = ckpt / ".tmp-rollout_1"
        partial.mkdir()
        (partial / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="miles_sdk.trainer"):
        trainer = _trainer(tmp_path, load=str(ckpt), save=str(ckpt))
    try:
        assert trainer.rollout_id == 0
        assert any("holds no complete checkpoint" in r.getMessage() for r in caplog.records)
        trainer.step()
        trainer.save(ckpt)  # and the folder recovers: the next --load resumes from it
    finally:
        trainer.close()
    resumed = _trainer(tmp_path, load=str(ckpt))
    try:
        assert resumed.rollout_id == 1
    finally:
        resumed.close()


def test_a_named_ckpt_step_that_is_missing_is_an_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(NoCheckpointError, match="rollout_3 does not exist"):
        _trainer(tmp_path, load=str(ckpt), ckpt_step=3)


def test_a_file_where_the_save_folder_should_be_is_reported_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "ckpt"
    blocker.write_text("oops")
    with pytest.raises(CheckpointError, match="a file is in the way"):
        _trainer(tmp_path, save=str(blocker), save_interval=1)


def test_python_and_numpy_rngs_are_seeded_from_config_seed(tmp_path: Path) -> None:
    draws = []
    for outside_seed in (1, 2):
        random.seed(outside_seed)  # whatever state the process was in before
        np.random.seed(outside_seed)
        trainer = _trainer(tmp_path, seed=11)
        draws.append((random.random(), float(np.random.rand())))
        trainer.close()
    assert draws[0] == draws[1]


def test_checkpoint_restores_python_and_numpy_rngs(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    try:
        trainer.step()
        trainer.save(tmp_path / "ckpt")
        expected = (random.random(), float(np.random.rand()))
        random.seed(0)
        np.random.seed(0)
        trainer.load(tmp_path / "ckpt")
        assert (random.random(), float(np.random.rand())) == expected
    finally:
        trainer.close()
