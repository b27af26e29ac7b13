"""LoRA checkpoints hold the adapter alone and resume; save_hf writes the merged model and a
peft folder; --lora-adapter-path starts from an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from miles_sdk import Config, Sample, Trainer
from miles_sdk.config import ConfigError
from miles_sdk.lora import LoraPolicy
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


async def alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def _config(tmp_path: Path, **overrides: Any) -> Config:
    base: dict[str, Any] = {
        "lr": 3e-2,
        "lora_rank": 4,
        "lora_alpha": 8,
        "target_modules": "q_proj,v_proj,down_proj",
        "sglang_enable_deterministic_inference": True,
        "output_dir": str(tmp_path / "out"),
    }
    return small_config(**(base | overrides))


def _trainer(config: Config) -> Trainer:
    # A larger tiny model, so the full model and the adapter differ in size by a wide margin.
    model, tok = tiny_policy("unit", seed=3, hidden_size=64, intermediate_size=128)
    return Trainer(config, model=model, tokenizer=tok, dataset=ROWS, reward_model=alternating_reward)


def _lora(trainer: Trainer) -> LoraPolicy:
    assert trainer.policy.lora is not None
    return trainer.policy.lora


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=IDS).logits
    return out


def test_checkpoint_holds_the_adapter_alone_and_resumes(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with _trainer(_config(tmp_path, no_save_optim=True)) as t:
        for _ in range(2):
            t.step()
        t.save(ckpt)
        adapter_bytes = sum(p.numel() * p.element_size() for p in _lora(t).trainable_parameters().values())
        model_bytes = sum(p.numel() * p.element_size() for p in t.policy.model.parameters())
        trained = {n: p.detach().clone() for n, p in _lora(t).trainable_parameters().items()}
        third = t.step()
    state_file = next(ckpt.glob("rollout_*/state.pt"))
    # The adapter plus the pickled RNG / data-source state, far below the frozen base.
    assert state_file.stat().st_size < adapter_bytes + 200_000 < model_bytes
    saved = torch.load(state_file, weights_only=False)["backend"]["model"]
    assert set(saved) == set(trained) and all("lora_" in k for k in saved)

    with _trainer(_config(tmp_path, no_save_optim=True, load=str(ckpt))) as resumed:
        lora = _lora(resumed)
        for n, p in lora.trainable_parameters().items():
            assert torch.equal(p, trained[n]), n
        # The engine samples from the loaded adapter at once, and the next step repeats the run's.
        torch.testing.assert_close(_logits(lora.engine_model), _logits(resumed.policy.model))
        again = resumed.step()
    assert again["rollout/reward_mean"] == third["rollout/reward_mean"]
    assert again["train/pg_loss"] == pytest.approx(third["train/pg_loss"], rel=1e-5, abs=1e-7)


def test_a_full_model_checkpoint_is_named_when_loaded_into_a_lora_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with _trainer(_config(tmp_path, lora_rank=0, target_modules=None)) as t:
        t.step()
        t.save(ckpt)
    with pytest.raises(ValueError, match="full model"):
        _trainer(_config(tmp_path, load=str(ckpt))).close()


def test_save_hf_writes_the_merged_model_and_a_peft_folder(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    with _trainer(_config(tmp_path, save=str(tmp_path / "ckpt"), save_hf=str(hf))) as t:
        for _ in range(2):
            t.step()
        t.save(tmp_path / "ckpt")
        trained = _logits(t.policy.model)
    assert (hf / "adapter" / "adapter_config.json").is_file()
    assert (hf / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(hf)
    torch.testing.assert_close(_logits(merged), trained, rtol=1e-5, atol=1e-5)
    base, _ = tiny_policy("unit", seed=3, hidden_size=64, intermediate_size=128)
    with_adapter = PeftModel.from_pretrained(base, str(hf / "adapter"))
    torch.testing.assert_close(_logits(with_adapter), trained, rtol=1e-5, atol=1e-5)


def test_training_starts_from_lora_adapter_path(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    with _trainer(_config(tmp_path)) as t:
        for _ in range(2):
            t.step()
        _lora(t).save_hf(hf)
        trained = _logits(t.policy.model)
    with _trainer(_config(tmp_path, lora_adapter_path=str(hf / "adapter"))) as t:
        torch.testing.assert_close(_logits(t.policy.model), trained, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_logits(_lora(t).engine_model), trained, rtol=1e-5, atol=1e-5)
        assert all(p.requires_grad for p in _lora(t).trainable_parameters().values())
        assert len(_lora(t).trainable_parameters()) == 2 * 3  # A and B of q, v and down
    with pytest.raises(ConfigError, match=r"rank 4 \(--lora-rank 8\)"):
        _trainer(_config(tmp_path, lora_rank=8, lora_adapter_path=str(hf / "adapter"))).close()
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        _trainer(_config(tmp_path, lora_adapter_path=str(hf))).close()


def test_save_dir_check_counts_the_adapter_not_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--save checks the free space for one checkpoint at construction. With LoRA a checkpoint is
    the adapter (and its Adam moments): the old estimate counted the whole model and its moments,
    and refused a disk that holds the LoRA checkpoints many times over."""
    import shutil

    model, _ = tiny_policy("unit", seed=3, hidden_size=64, intermediate_size=128)
    full_model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        "miles_sdk.checkpoint.shutil.disk_usage",
        lambda _: usage._replace(free=full_model_bytes),  # less than the model + its Adam moments
    )
    with _trainer(_config(tmp_path, save=str(tmp_path / "ckpt"))) as t:
        t.step()
        t.save(tmp_path / "ckpt")


def test_miles_flags_on_a_checkpoint_folder(tmp_path: Path) -> None:
    """The command-line path: --hf-checkpoint loads the base, the LoRA flags wrap it."""
    from miles_sdk.testing import save_tiny_policy

    folder = save_tiny_policy(tmp_path / "base", "unit", seed=3)
    config = Config.from_args(
        [
            *("--hf-checkpoint", str(folder), "--lora-rank", "4", "--lora-alpha", "8"),
            *("--target-modules", "linear_qkv,linear_proj", "--label-key", "label", "--device", "cpu"),
            *("--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4"),
        ]
    )
    with Trainer(config, dataset=ROWS, reward_model=alternating_reward) as t:
        t.step()
        names = set(_lora(t).trainable_parameters())
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
