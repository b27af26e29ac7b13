"""fp32 master weights for bf16 parameters: RL-sized updates are kept, and checkpoints resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.backends.optim import PolicyOptimizer, wants_master_weights
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def test_tiny_updates_survive_in_the_masters() -> None:
    weight = torch.nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    optim = PolicyOptimizer(Config(lr=1e-4), [weight], lr=1e-4, master_weights=True)
    for _ in range(10):
        weight.grad = torch.ones(4, dtype=torch.bfloat16)
        optim.clip_and_step(max_norm=1e9)
    assert optim.masters is not None
    # Ten AdamW steps of ~1e-4 each: the fp32 master moved by ~1e-3 ...
    torch.testing.assert_close(optim.masters[0], torch.full((4,), 1.0 - 1e-3), atol=2e-5, rtol=0)
    # ... though each is far below bf16's resolution at 1.0 (2**-7): plain bf16 AdamW would not move.
    plain = torch.nn.Parameter(torch.full((4,), 1.0, dtype=torch.bfloat16))
    plain_optim = PolicyOptimizer(Config(lr=1e-4), [plain], lr=1e-4, master_weights=False)
    for _ in range(10):
        plain.grad = torch.ones(4, dtype=torch.bfloat16)
        plain_optim.clip_and_step(max_norm=1e9)
    assert torch.equal(plain.detach(), torch.full((4,), 1.0, dtype=torch.bfloat16))
    # The live bf16 weight is the master rounded.
    assert torch.equal(weight.detach(), optim.masters[0].to(torch.bfloat16))


def test_master_weights_only_for_low_precision_parameters_and_dtype_auto() -> None:
    model, _ = tiny_policy("unit", seed=0)
    assert not wants_master_weights(Config(), model)
    model.to(torch.bfloat16)
    assert wants_master_weights(Config(), model)
    assert not wants_master_weights(Config(dtype="bfloat16"), model)


def _trainer(tmp_path: Path, name: str) -> Trainer:
    model, tok = tiny_policy("unit", seed=4)
    model.to(torch.bfloat16)
    cfg = small_config(output_dir=str(tmp_path / name), sglang_enable_deterministic_inference=True, lr=1e-3)
    return Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward)


def test_bf16_training_with_masters_resumes_exactly(tmp_path: Path) -> None:
    straight = _trainer(tmp_path, "straight")
    assert straight.backend.optim.masters is not None  # type: ignore[attr-defined]
    for _ in range(4):
        straight.step()
    expected = {k: v.clone() for k, v in straight.policy.model.state_dict().items()}
    straight.close()

    first = _trainer(tmp_path, "first")
    first.step()
    first.step()
    first.save(tmp_path / "ckpt")
    first.close()
    resumed = _trainer(tmp_path, "resumed")
    resumed.load(tmp_path / "ckpt")
    resumed.step()
    resumed.step()
    got = resumed.policy.model.state_dict()
    resumed.close()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_clip_grad_zero_means_no_clipping() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optim = PolicyOptimizer(Config(lr=0.1), [weight], lr=0.1, master_weights=False)
    weight.grad = torch.ones(3)
    norm = optim.clip_and_step(max_norm=0.0)
    assert norm == pytest.approx(3**0.5)
    assert torch.all(weight.detach() < 0)  # the step happened with the unclipped gradient
