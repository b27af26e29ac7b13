"""``run_steps``: a few real loop steps on the tiny policy and the CPU, with your hooks plugged in.

    result = run_steps({"reward_model": my_rm, "dynamic_sampling_filter": my_filter}, steps=2)
    assert result.metrics[-1]["rollout/reward_mean"] >= 0.0
    assert all(s.reward is not None for s in result.samples[0])

It checks in seconds that a hook composes with the whole loop (generate, score, filter, train,
sync), not only in isolation.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from miles_sdk.config import Config
from miles_sdk.types import Metrics, Sample

if TYPE_CHECKING:
    from miles_sdk.trainer import Trainer

__all__ = [
    "ARITHMETIC_ROWS",
    "StepsResult",
    "assert_same_steps",
    "parity_config",
    "run_steps",
    "small_config",
    "spread_reward",
    "step_trainer",
]

ARITHMETIC_ROWS: list[dict[str, Any]] = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
"""Nine one-digit additions: the rows the loop tests train on."""


@attrs.frozen
class StepsResult:
    """What :func:`run_steps` observed."""

    metrics: list[Metrics]
    """One metrics dict per step, as ``Trainer.step()`` returned it."""
    samples: list[list[Sample]]
    """The samples trained on at each step (flattened groups)."""


def small_config(**overrides: Any) -> Config:
    """A valid Config sized for the CPU: 2 prompts x 2 samples, 4 new tokens, one optimizer step."""
    base: dict[str, Any] = {
        "rollout_batch_size": 2,
        "n_samples_per_prompt": 2,
        "rollout_max_response_len": 4,
        "label_key": "label",
        "lr": 1e-4,
        "device": "cpu",
        "progress_bar": False,
        "micro_batch_size": 2,
        "max_engine_batch_size": 8,
    }
    base.update(overrides)
    return Config(**base)


def _default_dataset() -> list[dict[str, Any]]:
    return [dict(row) for row in ARITHMETIC_ROWS]


def parity_config(**overrides: Any) -> Config:
    """:func:`small_config` for parity runs (several replicas, ranks or servers against one
    engine): 4 prompts x 2 samples, 8 new tokens, a seed per sample and deterministic sampling,
    so the same samples come from any engine."""
    base: dict[str, Any] = {
        "rollout_batch_size": 4,
        "n_samples_per_prompt": 2,
        "rollout_max_response_len": 8,
        "lr": 1e-3,
        "rollout_seed": 7,
        "sglang_enable_deterministic_inference": True,
    }
    base.update(overrides)
    return small_config(**base)


async def spread_reward(args: Config, sample: Sample) -> float:
    """A reward with spread within groups (from the last 8 tokens), so every step of a parity
    run has a gradient to compare."""
    return float(sum(sample.tokens[-8:]) % 3) / 2.0


def run_steps(
    trainer_kwargs: Mapping[str, Any] | None = None,
    steps: int = 2,
    *,
    config: Config | None = None,
    dataset: Any = None,
    seed: int = 0,
) -> StepsResult:
    """Build a Trainer on ``tiny_policy("unit")`` with ``trainer_kwargs`` (hooks, engine, ...) and run
    ``steps`` steps. Without a ``reward_model`` or ``rm_type`` the reward is exact match with the label."""
    from miles_sdk.demo.task import addition_reward
    from miles_sdk.testing.tiny import tiny_policy
    from miles_sdk.trainer import Trainer

    kwargs = dict(trainer_kwargs or {})
    cfg = config or small_config(seed=seed)
    if cfg.output_dir is None:
        cfg = cfg.replace(output_dir=tempfile.mkdtemp(prefix="miles_sdk_run_steps_"))
    if "reward_model" not in kwargs and cfg.rm_type is None and cfg.custom_rm_path is None:
        kwargs["reward_model"] = addition_reward
    if "model" not in kwargs and "model_provider" not in kwargs:
        kwargs["model"], kwargs["tokenizer"] = tiny_policy("unit", seed=seed)
    if dataset is None and cfg.prompt_data is None and "data_source" not in kwargs:
        dataset = _default_dataset()
    trainer = Trainer(cfg, dataset=dataset, **kwargs)
    try:
        return step_trainer(trainer, steps)
    finally:
        trainer.close()


def step_trainer(trainer: Trainer, steps: int) -> StepsResult:
    """Run ``steps`` steps of an open ``trainer``; its metrics and trained samples per step."""
    metrics: list[Metrics] = []
    samples: list[list[Sample]] = []
    for _ in range(steps):
        metrics.append(trainer.step())
        samples.append(list(trainer.last_samples))
    return StepsResult(metrics=metrics, samples=samples)


def assert_same_steps(
    a: StepsResult, b: StepsResult, keys: Sequence[str], *, rel: float = 1e-4, abs_tol: float = 1e-6
) -> None:
    """Two runs trained on the same samples (tokens, rewards) and agree on the metrics ``keys``
    per step (``rel``/``abs_tol`` as math.isclose): the parity check of scale-out runs."""
    for step, (ma, mb, sa, sb) in enumerate(zip(a.metrics, b.metrics, a.samples, b.samples, strict=True)):
        assert [s.tokens for s in sa] == [s.tokens for s in sb], f"step {step}: different samples"
        assert [s.reward for s in sa] == [s.reward for s in sb], f"step {step}: different rewards"
        for key in keys:
            assert math.isclose(mb[key], ma[key], rel_tol=rel, abs_tol=abs_tol), (
                f"step {step}: {key} {mb[key]!r} vs {ma[key]!r}"
            )
