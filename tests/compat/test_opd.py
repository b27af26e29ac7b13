"""On-policy distillation with Miles's own OPD post-process (issue 15.7)."""

from __future__ import annotations

import pytest
import torch

from miles_sdk.algo import convert_samples_to_train_data
from miles_sdk.compat import install
from miles_sdk.config import Config, ConfigError
from miles_sdk.testing import run_steps, small_config
from miles_sdk.testing.tiny import tiny_policy
from miles_sdk.types import Sample

install()

from miles_style_hooks import opd_teacher  # noqa: E402

MILES_OPD = "miles_style_hooks.on_policy_distillation"  # Miles's file, unchanged
PROMPTS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


def test_get_reward_value_with_args_returns_a_dict_reward_when_reward_key_unset() -> None:
    reply = {"meta_info": {"input_token_logprobs": []}}
    sample = Sample(reward=reply)
    assert sample.get_reward_value(Config()) is reply  # Miles: `return self.reward` without reward_key
    with pytest.raises(ValueError, match="set reward_key"):
        sample.get_reward_value(None)  # the SDK's own form stays strict


def test_convert_reads_tensor_teacher_log_probs() -> None:
    samples = [
        Sample(index=i, tokens=[1, 2, 3], response_length=2, reward=0.0, teacher_log_probs=torch.tensor([-1.0, -2.0]))
        for i in range(2)
    ]
    data = convert_samples_to_train_data(Config(), samples)
    assert data["teacher_log_probs"] == [[-1.0, -2.0], [-1.0, -2.0]]


def test_opd_flags() -> None:
    cfg = Config.from_args(["--use-opd", "--opd-type", "sglang", "--opd-kl-coef", "0.5", "--opd-log-prob-top-k", "0"])
    assert cfg.use_opd and cfg.opd_type == "sglang" and cfg.opd_kl_coef == 0.5 and cfg.opd_log_prob_top_k == 0
    with pytest.raises(ConfigError, match="opd_type"):
        Config(use_opd=True)
    with pytest.raises(ConfigError, match="megatron"):
        Config(use_opd=True, opd_type="megatron")


def _even_token_mass(model: torch.nn.Module, tokenizer: object) -> float:
    """The student's probability of an even token id as the first response token (mean over prompts)."""
    enc = [tokenizer(p["input"], add_special_tokens=False)["input_ids"] for p in PROMPTS]  # type: ignore[operator]
    with torch.no_grad():
        probs = [torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1) for ids in enc]
    return float(torch.stack([p[0::2].sum() for p in probs]).mean())


def _run(use_opd: bool, steps: int = 3) -> tuple[float, float, list[dict[str, float]]]:
    model, tokenizer = tiny_policy("unit", seed=0)
    opd_teacher.TEACHER["vocab"] = len(tokenizer)
    before = _even_token_mass(model, tokenizer)
    opd = {"use_opd": True, "opd_type": "sglang", "opd_kl_coef": 1.0} if use_opd else {}
    cfg = small_config(
        custom_rm_path="miles_style_hooks.opd_teacher.teacher_reply",
        custom_reward_post_process_path=f"{MILES_OPD}.post_process_rewards",
        lr=3e-2,
        rollout_batch_size=8,
        n_samples_per_prompt=4,
        rollout_max_response_len=8,
        micro_batch_size=32,
        **opd,
    )
    result = run_steps({"model": model, "tokenizer": tokenizer}, steps=steps, config=cfg, dataset=PROMPTS)
    model.eval()
    return before, _even_token_mass(model, tokenizer), result.metrics


def test_student_moves_toward_the_teacher() -> None:
    # Old code: rollout_metrics raised on the dict reward (no reward_key) before the post-process,
    # then convert choked on the tensor teacher_log_probs, and nothing trained on them.
    before, after, metrics = _run(use_opd=True)
    assert after > before + 0.1, (before, after)  # the teacher puts 0.99 there
    assert all(m["rollout/reward_mean"] == 0.0 for m in metrics)  # reported after the post-process
    # Without OPD the same run has zero rewards and zero advantages: the student stays put.
    control_before, control_after, _ = _run(use_opd=False, steps=1)
    assert abs(control_after - control_before) < 1e-4


def test_shim_post_process_stores_teacher_log_probs_and_refuses_top_k() -> None:
    from miles.rollout.on_policy_distillation import post_process_rewards

    reply = {"meta_info": {"input_token_logprobs": [[None, 5, None], [-0.5, 6, None], [-1.5, 7, None], [-2.5, 8, None]]}}
    sample = Sample(index=0, tokens=[5, 6, 7, 8], response_length=2, reward=reply)
    raw, rewards = post_process_rewards(Config(), [sample])
    assert raw == rewards == [0.0]
    assert torch.equal(torch.as_tensor(sample.teacher_log_probs), torch.tensor([-1.5, -2.5]))
    with pytest.raises(NotImplementedError, match="top-k OPD"):
        post_process_rewards(Config(use_opd=True, opd_type="sglang", opd_log_prob_top_k=4), [sample])
