"""The learning-rate schedule matches Megatron's OptimizerParamScheduler, and the Trainer tells it
the run's length whichever way the length is given (issue 13, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from miles_sdk import Config, Sample
from miles_sdk.backends.lr_schedule import LRSchedule
from miles_sdk.testing import small_config
from miles_sdk.testing.run import run_steps


def _schedule(**overrides: object) -> LRSchedule:
    base: dict[str, object] = {"lr": 1.0, "min_lr": 0.0, "num_rollout": None, "num_epoch": 1}
    base.update(overrides)
    return LRSchedule(Config(**base))  # type: ignore[arg-type]


# Tables computed by hand from Megatron's get_lr (num_steps = optimizer steps taken so far).
LINEAR_WARMUP_2_DECAY_6_MIN_01 = [0.0, 0.5, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1]
COSINE_WARMUP_10_OF_20 = {0: 0.0, 5: 0.5, 10: 1.0, 11: 0.9755283, 15: 0.5, 19: 0.0244717, 20: 0.0, 25: 0.0}
CONSTANT_WARMUP_4_FROM_02 = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]


def test_linear_with_warmup_and_min_lr_matches_megatron() -> None:
    schedule = _schedule(lr_decay_style="linear", lr_warmup_iters=2, lr_decay_iters=6, min_lr=0.1)
    got = [schedule.lr_at(s) for s in range(9)]
    assert got == pytest.approx(LINEAR_WARMUP_2_DECAY_6_MIN_01)


def test_cosine_progress_counts_from_the_end_of_warmup() -> None:
    # The old schedule used step / total: at step 10 of 20 it jumped from 1.0 to 0.5.
    schedule = _schedule(lr_decay_style="cosine", lr_warmup_iters=10, lr_decay_iters=20)
    for step, lr in COSINE_WARMUP_10_OF_20.items():
        assert schedule.lr_at(step) == pytest.approx(lr, abs=1e-7), step


def test_constant_with_warmup_init() -> None:
    schedule = _schedule(lr_decay_style="constant", lr_warmup_iters=4, lr_warmup_init=0.2)
    assert [schedule.lr_at(s) for s in range(7)] == pytest.approx(CONSTANT_WARMUP_4_FROM_02)


def test_factor_is_relative_to_lr_and_decay_length_defaults_to_the_run() -> None:
    # 2 prompts x 2 samples / global batch 2 = 2 optimizer steps per rollout; 3 rollouts = 6 steps.
    cfg = small_config(num_rollout=3, global_batch_size=2, lr=4e-3, lr_decay_style="linear")
    schedule = LRSchedule(cfg)
    assert schedule.decay_steps == 6
    assert [schedule(s) for s in (0, 3, 6, 7)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    schedule.set_total_steps(12)  # fit(num_rollout=6) on the same Config
    assert schedule(3) == pytest.approx(0.75)
    pinned = LRSchedule(cfg.replace(lr_decay_iters=4))
    pinned.set_total_steps(12)  # lr_decay_iters from the Config wins over the run's length
    assert pinned(2) == pytest.approx(0.5)


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def _fit_lrs(cfg: Config, num_rollout: int | None) -> list[float]:
    from miles_sdk import Trainer
    from miles_sdk.testing import tiny_policy

    model, tok = tiny_policy("unit", seed=0)
    rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
    trainer = Trainer(cfg, model=model, tokenizer=tok, dataset=rows, reward_model=_alternating_reward)
    try:
        history = trainer.fit(num_rollout)
    finally:
        trainer.close()
    return [m["train/lr"] for m in history]


def test_decay_follows_num_epoch(tmp_path: Path) -> None:
    # 9 prompts, 2 per rollout, dropping the last partial batch: 4 rollouts per epoch; one
    # optimizer step each (global batch 4). Old code: the rate stayed at lr for the whole run.
    cfg = small_config(
        output_dir=str(tmp_path), num_epoch=1, lr=1e-3, lr_decay_style="linear", global_batch_size=4
    )
    lrs = _fit_lrs(cfg, None)
    assert lrs == pytest.approx([1e-3 * (1 - s / len(lrs)) for s in range(len(lrs))])
    assert len(lrs) >= 3


def test_decay_follows_fit_num_rollout(tmp_path: Path) -> None:
    cfg = small_config(
        output_dir=str(tmp_path), num_epoch=100, lr=1e-3, lr_decay_style="cosine", global_batch_size=4
    )
    lrs = _fit_lrs(cfg, 3)
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.25e-3])


def test_decay_without_a_known_length_warns(tmp_path: Path) -> None:
    cfg = small_config(output_dir=str(tmp_path), num_epoch=1, lr_decay_style="linear", global_batch_size=4)
    with pytest.warns(RuntimeWarning, match="lr_decay_style='linear' but the run's length is unknown"):
        result = run_steps({"reward_model": _alternating_reward}, steps=2, config=cfg)
    assert [m["train/lr"] for m in result.metrics] == [cfg.lr, cfg.lr]
