"""Dropout is off in the policy, the reference and the critic (issue 13, item 9): old log-probs are
scored in eval mode and the loss in train mode, so with dropout on the ratio was not 1 even at
the first, on-policy step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from miles_sdk import Config, Sample
from miles_sdk._policy import disable_dropout
from miles_sdk.testing import small_config, tiny_policy
from miles_sdk.testing.run import run_steps


def _with_dropout(rate: float = 0.5) -> nn.Module:
    """A tiny Llama with attention dropout (config and modules) and an nn.Dropout in its MLPs."""
    model, _ = tiny_policy("unit", seed=0)
    model.config.attention_dropout = rate
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = rate
        layer.mlp.act_fn = nn.Sequential(layer.mlp.act_fn, nn.Dropout(rate))
    return model


def test_disable_dropout_zeroes_config_module_attributes_and_dropout_modules() -> None:
    model = _with_dropout()
    changed = disable_dropout(model)
    assert "config.attention_dropout=0.5" in changed
    assert model.config.attention_dropout == 0.0
    for layer in model.model.layers:
        assert layer.self_attn.attention_dropout == 0.0
        assert all(m.p == 0.0 for m in layer.mlp.modules() if isinstance(m, nn.Dropout))
    assert disable_dropout(model) == []  # idempotent, and quiet the second time


def test_gpt2_style_names_are_caught() -> None:
    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.resid_pdrop = 0.1
            self.use_dropout = True  # a flag, not a rate: left alone
            self.drop = nn.Dropout(0.2)

    body = Body()
    disable_dropout(body)
    assert body.resid_pdrop == 0.0 and body.use_dropout is True and body.drop.p == 0.0


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def test_first_on_policy_step_has_ratio_one_with_a_dropout_model(tmp_path: Path) -> None:
    model = _with_dropout()
    _, tok = tiny_policy("unit", seed=0)
    # Old log-probs scored by the trainer in eval mode (not the train pass's own, detached), and a
    # KL to the reference (eval mode too) measured though not trained on.
    cfg = small_config(
        output_dir=str(tmp_path), skip_on_policy_old_log_probs=False, use_kl_loss=True, kl_loss_coef=0.0
    )
    result = run_steps(
        {"model": model, "tokenizer": tok, "reward_model": _alternating_reward}, steps=1, config=cfg
    )
    metrics = result.metrics[0]
    # Old code: dropout 0.5 in the loss's train-mode forward put the ratio far from 1 and clipped.
    assert metrics["train/pg_clipfrac"] == 0.0
    assert metrics["train/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["train/ppo_kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["train/kl_loss"] == pytest.approx(0.0, abs=1e-5)


def test_train_mode_log_probs_equal_eval_mode_after_build() -> None:
    from miles_sdk import Trainer

    model = _with_dropout()
    _, tok = tiny_policy("unit", seed=0)
    trainer = Trainer(
        small_config(),
        model=model,
        tokenizer=tok,
        dataset=[{"input": "1+1=", "label": "2"}],
        reward_model=_alternating_reward,
    )
    try:
        policy = trainer.policy.model
        ids = torch.tensor([[3, 4, 5, 6, 7]])
        policy.train()
        with torch.no_grad():
            train_logits = policy(ids).logits
            policy.eval()
            eval_logits = policy(ids).logits
        policy.train()
        torch.testing.assert_close(train_logits, eval_logits, rtol=0, atol=0)
    finally:
        trainer.close()
