"""The torch backend's features on FSDP ranks: sequence packing, gradient checkpointing, dropout off."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from miles_sdk import Config, Sample, Trainer
from miles_sdk.distributed.launch import _free_port
from miles_sdk.distributed.rank import ModelSource, RankHooks, RankSpec, TrainRank
from miles_sdk.testing.run import StepsResult, run_steps, small_config
from miles_sdk.testing.tiny import tiny_policy

COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "train/loss")


async def spread_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


def _config(**overrides: Any) -> Config:
    return small_config(
        rollout_batch_size=4,
        n_samples_per_prompt=2,
        lr=1e-3,
        rollout_seed=7,
        **overrides,
    )


# Prompts of different lengths, so that packing has padding to remove.
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in (1, 22, 333, 4444) for b in (5, 66)]


def _run(**overrides: Any) -> StepsResult:
    return run_steps({"reward_model": spread_reward}, config=_config(**overrides), steps=2, dataset=DATASET)


def test_packing_and_gradient_checkpointing_match_the_torch_backend() -> None:
    features = {"pack_sequences": "on", "gradient_checkpointing": True}
    torch_run = _run(**features)
    lengths = {len(s.tokens) for s in torch_run.samples[0]}
    assert len(lengths) > 1, "the comparison needs padding for packing to remove"
    fsdp_run = _run(train_backend="fsdp", **features)
    for step, (a, b) in enumerate(zip(torch_run.metrics, fsdp_run.metrics, strict=True)):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (step, key)


def test_the_rank_packs_and_checkpoints() -> None:
    model, tok = tiny_policy("unit", seed=0)
    config = _config(train_backend="fsdp", pack_sequences="on", gradient_checkpointing=True)
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as t:
        rank: TrainRank = t.backend.ranks.rank  # type: ignore[attr-defined]
        assert rank.backend._pack
        assert rank.model.lm.model.gradient_checkpointing


def test_ranks_switch_dropout_off() -> None:
    """A rank builds its policy from the model's config: with dropout rates in it (a model that did
    not come through the Trainer's build_policy), the rank still trains with dropout off."""
    model, _ = tiny_policy("unit", seed=0)
    model.config.attention_dropout = 0.5
    source = ModelSource.of(model, ref_model=model)
    assert source.config.attention_dropout == 0.5
    config = _config(train_backend="fsdp", use_kl_loss=True, kl_loss_coef=0.1)
    rank = TrainRank(config, RankSpec(0, 1, "cpu", "127.0.0.1", _free_port()), source, RankHooks())
    try:
        for role, module in (("policy", rank.model), ("reference", rank.backend.ref_model)):
            assert module is not None
            assert module.lm.config.attention_dropout == 0.0, role
            for name, sub in module.named_modules():
                assert not getattr(sub, "attention_dropout", 0.0), (role, name)
                assert not (isinstance(sub, nn.Dropout) and sub.p > 0), (role, name)
    finally:
        rank.close()


def test_cpu_offload_on_cpu_ranks_is_a_config_error() -> None:
    """FSDP2's CPUOffloadPolicy pins memory, which needs an accelerator: on CPU ranks it failed
    inside fully_shard ("Cannot access accelerator device")."""
    from miles_sdk.config import ConfigError

    model, tok = tiny_policy("unit", seed=0)
    config = _config(train_backend="fsdp", fsdp_cpu_offload=True)
    with pytest.raises(ConfigError, match=r"fsdp_cpu_offload \(--fsdp-cpu-offload\).*'cpu'"):
        Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET)
