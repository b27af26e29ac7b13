"""LoRA training: only the adapter trains, the engine samples from base + adapter (its log-probs
match the trainer's), the reference is the base."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.lora import LoraPolicy
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
GAP = "train/train_rollout_logprob_abs_diff"


async def alternating_reward(args: Config, sample: Sample) -> float:
    """Every group has a reward spread, so every step moves the adapter."""
    return float((sample.index or 0) % 2)


def _lora_config(**overrides: Any) -> Any:
    base: dict[str, Any] = {"lr": 3e-2, "lora_rank": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    return small_config(**(base | overrides))


def _trainer(dtype: torch.dtype = torch.float32, **overrides: Any) -> Trainer:
    model, tok = tiny_policy("unit", seed=3, dtype=dtype)
    return Trainer(
        _lora_config(**overrides), model=model, tokenizer=tok, dataset=ROWS, reward_model=alternating_reward
    )


def _lora(trainer: Trainer) -> LoraPolicy:
    assert trainer.policy.lora is not None
    return trainer.policy.lora


def test_only_the_adapter_trains() -> None:
    with _trainer() as t:
        lora = _lora(t)
        trainable = lora.trainable_parameters()
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        optimized = {id(p) for group in t.backend.optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in trainable.values()}
        frozen = {n: p.detach().clone() for n, p in t.policy.model.named_parameters() if not p.requires_grad}
        adapter = {n: p.detach().clone() for n, p in trainable.items()}
        for _ in range(2):
            t.step()
        for n, p in t.policy.model.named_parameters():
            if n in frozen:
                assert torch.equal(p, frozen[n]), f"{n} is frozen but changed"
        assert any(not torch.equal(p, adapter[n]) for n, p in trainable.items()), "the adapter did not train"


def test_a_bf16_base_keeps_no_master_copies_of_the_fp32_adapter() -> None:
    """peft keeps the adapter in fp32 over a bf16 base: fp32 masters of it would be a second copy
    for nothing (the old check looked at the first parameter, the bf16 embedding)."""
    with _trainer(dtype=torch.bfloat16) as t:
        assert all(p.dtype == torch.float32 for p in _lora(t).trainable_parameters().values())
        assert t.backend.optim.masters is None
        optimized = [p for group in t.backend.optimizer.param_groups for p in group["params"]]
        assert {id(p) for p in optimized} == {id(p) for p in _lora(t).trainable_parameters().values()}


def test_engine_log_probs_match_the_trainers_after_the_adapter_trained() -> None:
    """On-policy steps: the engine samples from base + adapter merged at each sync, so its
    log-probs equal the trainer's (peft forward) up to fp32 rounding, also after the adapter moved."""
    with _trainer(sglang_enable_deterministic_inference=True) as t:
        gaps = [t.step()[GAP] for _ in range(3)]
        lora = _lora(t)
        assert any(p.abs().max() > 1e-3 for n, p in lora.trainable_parameters().items() if "lora_B" in n)
        assert max(gaps) < 1e-5, gaps
        # The engine's model is a plain transformers model equal to the trained one.
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        with torch.no_grad():
            torch.testing.assert_close(
                lora.engine_model(input_ids=ids).logits,
                t.policy.model(input_ids=ids).logits,
                rtol=1e-5,
                atol=1e-5,
            )


def test_without_the_merge_the_engine_would_sample_from_stale_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control for the test above: with the merge skipped, the gap is large."""
    with _trainer(sglang_enable_deterministic_inference=True) as t:
        monkeypatch.setattr(_lora(t), "merge_into_engine", lambda: None)
        gaps = [t.step()[GAP] for _ in range(3)]
        assert max(gaps[1:]) > 1e-3, gaps


def test_the_engine_model_shares_the_untouched_weights() -> None:
    with _trainer(target_modules="q_proj,v_proj") as t:
        engine, base = _lora(t).engine_model, t.policy.model.get_base_model()  # type: ignore[operator]
        assert engine.model.embed_tokens.weight is base.model.embed_tokens.weight
        assert engine.model.layers[0].mlp.up_proj.weight is base.model.layers[0].mlp.up_proj.weight
        q = base.model.layers[0].self_attn.q_proj
        assert engine.model.layers[0].self_attn.q_proj.weight is not q.base_layer.weight
        assert type(engine.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_the_reference_is_the_base_with_the_adapter_off() -> None:
    base, _ = tiny_policy("unit", seed=3)
    with _trainer(use_kl_loss=True, kl_loss_coef=0.1) as t:
        assert t.backend.ref_model is t.policy.model  # no second copy of the weights
        for _ in range(2):
            t.step()
        data = {"tokens": [[5, 6, 7, 8, 9]], "response_lengths": [2]}
        ref = t.backend.compute_log_probs(data, which="ref")[0]  # type: ignore[arg-type]
        actor = t.backend.compute_log_probs(data, which="actor")[0]  # type: ignore[arg-type]
    with torch.no_grad():
        logits = base(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0, -3:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor([[8], [9]])).squeeze(-1)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (actor - ref).abs().max() > 1e-4  # the adapter is on for the actor


def _adapter_after_two_steps(**overrides: Any) -> dict[str, torch.Tensor]:
    with _trainer(sglang_enable_deterministic_inference=True, **overrides) as t:
        for _ in range(2):
            t.step()
        return {n: p.detach().clone() for n, p in _lora(t).trainable_parameters().items()}


def test_gradient_checkpointing_trains_the_adapter_as_without() -> None:
    """With a frozen base the checkpointed layers' inputs need no grad; the adapter inside them
    must get the same gradient all the same (a reentrant checkpoint would drop it)."""
    plain = _adapter_after_two_steps()
    checkpointed = _adapter_after_two_steps(gradient_checkpointing=True)
    assert any(p.abs().max() > 1e-3 for n, p in plain.items() if "lora_B" in n)
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-4, atol=1e-6, msg=name)
