"""train_backend="fsdp": N CPU ranks over gloo train exactly what one process trains.

With the same seeds, the engine draws the same samples, and the FSDP ranks' averaged gradients give
the same update as the one-process torch backend: per-step grad norm and losses agree to 1e-4
(relative; pg_loss is ~1e-8 by construction, so it gets an absolute 1e-6 beside it).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from miles_sdk import Config, Sample, Trainer
from miles_sdk.distributed.launch import RankError
from miles_sdk.testing.run import StepsResult, run_steps, small_config
from miles_sdk.testing.tiny import tiny_policy

COMPARED = (
    "train/grad_norm",
    "train/pg_loss",
    "train/entropy_loss",
    "train/pg_clipfrac",
    "train/ppo_kl",
    "train/ratio_max",
    "rollout/raw_reward",
)


async def spread_reward(args: Config, sample: Sample) -> float:
    """A reward with spread within every group, so each step has a gradient to compare."""
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


def _config(**overrides: Any) -> Config:
    # Two optimizer steps per rollout (global batch 4 of 8 samples): the second is off-policy, so
    # the ratio, clip fraction and ppo_kl the ranks reduce are not trivially 1, 0 and 0.
    settings: dict[str, Any] = {"rollout_batch_size": 4, "n_samples_per_prompt": 2, "global_batch_size": 4}
    return small_config(**(settings | {"lr": 1e-3, "rollout_seed": 7} | overrides))


def _run(steps: int = 3, **overrides: Any) -> StepsResult:
    return run_steps({"reward_model": spread_reward}, config=_config(**overrides), steps=steps)


def _assert_same_run(a: StepsResult, b: StepsResult) -> None:
    for step, (ma, mb, sa, sb) in enumerate(zip(a.metrics, b.metrics, a.samples, b.samples, strict=True)):
        assert [s.tokens for s in sa] == [s.tokens for s in sb], f"step {step}: different samples"
        for key in COMPARED:
            if key in ma:
                assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), f"step {step}: {key}"
    assert a.metrics[0]["train/grad_norm"] > 0.01, "the comparison needs a real gradient"
    assert max(m["train/ppo_kl"] for m in a.metrics) != 0.0, "the comparison needs an off-policy step"


@pytest.fixture(scope="module")
def one_process() -> StepsResult:
    return _run()


def test_one_rank_in_process_matches_the_torch_backend(one_process: StepsResult) -> None:
    _assert_same_run(one_process, _run(train_backend="fsdp"))


def test_two_ranks_match_one_process(one_process: StepsResult) -> None:
    _assert_same_run(
        one_process, _run(train_backend="fsdp", actor_num_gpus_per_node=2, distributed_launcher="processes")
    )


def test_a_dead_rank_fails_the_step_naming_it() -> None:
    model, tok = tiny_policy("unit", seed=0)
    config = _config(train_backend="fsdp", actor_num_gpus_per_node=2, distributed_launcher="processes")
    with Trainer(
        config,
        model=model,
        tokenizer=tok,
        reward_model=spread_reward,
        dataset=[{"input": "1+1=", "label": "2"}] * 4,
    ) as trainer:
        os.kill(trainer.backend.ranks.pids()[1], signal.SIGKILL)  # type: ignore[attr-defined]
        with pytest.raises(RankError, match="training rank 1"):
            trainer.step()


# Stop tokens drawn often by the random tiny policy: responses of 1 to 12 tokens, so the two ranks'
# shares of a step hold different token counts.
UNEVEN = {"rollout_max_response_len": 12, "rollout_stop_token_ids": list(range(100, 140))}
PER_TOKEN_COMPARED = (
    "train/grad_norm",
    "train/pg_loss",
    "train/entropy_loss",
    "train/pg_clipfrac",
    "train/ppo_kl",
    "train/kl_loss",
    "train/tis",
)


def test_per_token_loss_over_two_ranks_matches_one_process() -> None:
    """calculate_per_token_loss: every token's loss over the global token count, whichever rank
    holds it (the ranks divided by their own counts before, weighting a short share's tokens up)."""
    # With the reference model's KL loss and TIS, whose terms are reduced per token too.
    per_token = {
        "calculate_per_token_loss": True,
        "use_kl_loss": True,
        "kl_loss_coef": 0.1,
        "use_tis": True,
        **UNEVEN,
    }
    one = _run(steps=2, **per_token)
    two = _run(
        steps=2,
        train_backend="fsdp",
        actor_num_gpus_per_node=2,
        distributed_launcher="processes",
        **per_token,
    )
    first_step = [len(s.tokens) for s in one.samples[0][:4]]
    assert sum(first_step[0::2]) != sum(first_step[1::2]), "the ranks' shares must differ in tokens"
    for step, (ma, mb) in enumerate(zip(one.metrics, two.metrics, strict=True)):
        for key in PER_TOKEN_COMPARED:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4), f"step {step}: {key}"
    assert abs(one.metrics[0]["train/pg_loss"]) > 1e-4, "uneven lengths give a per-token pg_loss away from 0"
