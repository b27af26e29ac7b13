"""train_backend="fsdp" on one GPU (one rank in the driver's process, NCCL, bf16 compute over fp32
shards): what the CPU tests cannot reach. Skipped without CUDA; run on the GPU device with
``pytest -q tests/distributed/test_fsdp_cuda.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def spread_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


def _config(**overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "rollout_batch_size": 4,
        "n_samples_per_prompt": 2,
        "global_batch_size": 4,
        "lr": 1e-3,
        "rollout_seed": 7,
        "device": "cuda",
        "train_backend": "fsdp",
        "sglang_enable_deterministic_inference": True,
    }
    return small_config(**(settings | overrides))


def _steps(config: Config, steps: int) -> list[dict[str, float]]:
    model, tok = tiny_policy("unit", seed=0)
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as trainer:
        return [trainer.step() for _ in range(steps)]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"advantage_estimator": "ppo"}, {"fsdp_cpu_offload": True}, {"calculate_per_token_loss": True}],
    ids=["grpo", "ppo", "cpu_offload", "per_token"],
)
def test_steps_save_and_resume_on_a_gpu(tmp_path: Path, overrides: dict[str, Any]) -> None:
    save = str(tmp_path / "ckpt")
    straight = _steps(_config(save=save, save_interval=1, **overrides), steps=2)
    assert all(torch.isfinite(torch.tensor(m["train/grad_norm"])) for m in straight)
    assert (tmp_path / "ckpt" / "rollout_1" / "shards" / ".metadata").is_file()
    resumed = _steps(_config(load=save, ckpt_step=1, **overrides), steps=1)[0]
    keys = ["train/grad_norm", "train/pg_loss"] + (
        ["train/critic_value_loss"] if overrides.get("advantage_estimator") else []
    )
    for key in keys:
        assert resumed[key] == pytest.approx(straight[1][key], rel=1e-3, abs=1e-6), key


def test_one_gpu_rank_trains_like_the_torch_backend() -> None:
    """bf16 compute on both sides (the torch backend: bf16 parameters with fp32 masters; FSDP: fp32
    shards cast to bf16 for compute), so only close, not equal."""
    fsdp = _steps(_config(), steps=2)
    plain = _steps(_config(train_backend="torch"), steps=2)
    for a, b in zip(plain, fsdp, strict=True):
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=5e-2)


@pytest.mark.parametrize(
    "features",
    [{}, {"gradient_checkpointing": True, "pack_sequences": "on"}, {"fsdp_cpu_offload": True}],
    ids=["plain", "ckpt_packed", "cpu_offload"],
)
def test_a_gpu_rank_runs_its_layers_compiled(
    features: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """compile_model's default (auto: inductor on CUDA) compiles the FSDP rank's decoder layers
    (before: 0 compiled graphs under FSDP), with gradient checkpointing and packing, or with the
    shards in host memory, and trains like the eager rank (bf16 compute on both: close, not
    equal)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, tok = tiny_policy("unit", seed=0)
    with (
        caplog.at_level("WARNING"),
        Trainer(
            _config(**features), model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET
        ) as t,
    ):
        compiled = [t.step() for _ in range(2)]
        report = t.backend.ranks.call("compile_report", [()])[0]  # type: ignore[attr-defined]
    assert "torch.compile failed" not in caplog.text, caplog.text
    assert report["compiled"] and report["graphs"] > 0 and not report["installed"], report
    eager = _steps(_config(compile_model="off", **features), steps=2)
    for a, b in zip(eager, compiled, strict=True):
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=5e-2)
        assert b["train/pg_loss"] == pytest.approx(a["train/pg_loss"], rel=5e-2, abs=1e-4)
