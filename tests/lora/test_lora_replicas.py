"""LoRA with engine replicas in other processes: they get the merged weights through the sync
folder, so they sample from base + adapter as the in-process engine does."""

from __future__ import annotations

from miles_sdk import Config, Sample, Trainer
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
GAP = "train/train_rollout_logprob_abs_diff"


async def alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def test_replicas_sample_from_base_plus_adapter() -> None:
    config = small_config(
        lr=3e-2,
        lora_rank=4,
        lora_alpha=8,
        target_modules="all-linear",
        sglang_enable_deterministic_inference=True,
        rollout_num_gpus=2,
        distributed_launcher="processes",
        check_weight_sync=True,  # each replica's fingerprint of the merged weights is checked
    )
    model, tok = tiny_policy("unit", seed=3)
    with Trainer(config, model=model, tokenizer=tok, dataset=ROWS, reward_model=alternating_reward) as t:
        gaps = [t.step()[GAP] for _ in range(3)]
        assert t.policy.lora is not None
        assert any(
            p.abs().max() > 1e-3 for n, p in t.policy.lora.trainable_parameters().items() if "lora_B" in n
        )
    assert max(gaps) < 1e-5, gaps
