"""examples/custom_rollout: the best-of-n rejection rollout on a ScriptedEngine, and a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import examples.custom_rollout.rollout as rollout_module
from examples.custom_rollout import run
from examples.custom_rollout.rollout import best_of_n_rollout
from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSourceWithBuffer
from miles_sdk.demo.task import addition_reward
from miles_sdk.hooks import RolloutFn
from miles_sdk.rollout import RolloutContext, RolloutError, use_rollout_context
from miles_sdk.testing import ScriptedEngine, check_hook, tiny_tokenizer
from miles_sdk.types import RolloutFnTrainOutput, Sample

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a, b in ((1, 1), (1, 2), (2, 2), (3, 3))]
ARGS = Config(label_key="label", rollout_batch_size=2, n_samples_per_prompt=2)


async def _rollout(
    script: dict[str, str], args: Config = ARGS
) -> tuple[RolloutFnTrainOutput, ScriptedEngine]:
    tok = tiny_tokenizer()
    engine = ScriptedEngine(script, tokenizer=tok)
    ctx = RolloutContext(engine=engine, tokenizer=tok, reward_fn=addition_reward)
    with use_rollout_context(ctx):
        out = await best_of_n_rollout(args, 3, RolloutDataSourceWithBuffer(args, tokenizer=tok, dataset=ROWS))
    assert isinstance(out, RolloutFnTrainOutput)
    return out, engine


async def test_groups_whose_best_sample_misses_are_rejected_and_replaced() -> None:
    # 1+1 and 2+2 are answered right, 1+2 wrong: round 1 keeps 1+1, rejects 1+2; round 2 draws 2+2.
    out, engine = await _rollout({"1+1=": "2<|im_end|>", "1+2=": "4<|im_end|>", "2+2=": "4<|im_end|>"})
    assert [g[0].prompt for g in out.samples] == ["1+1=", "2+2="]
    assert all(s.reward == 1.0 and s.rollout_id == 3 for g in out.samples for s in g)
    assert out.metrics["rollout/best_of_n/rounds"] == 2
    assert out.metrics["rollout/best_of_n/rejected"] == 1
    assert out.metrics["rollout/best_of_n/topped_up"] == 0
    assert len(engine.requests) == 6  # 3 prompts x 2 samples


async def test_a_batch_with_no_passing_group_is_topped_up_with_rejects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(rollout_module.BEST_OF_N_CONFIGS, "max_rounds", 2)
    out, engine = await _rollout({"=": "0<|im_end|>"})
    assert len(out.samples) == 2 and all(len(g) == 2 for g in out.samples)
    assert out.metrics["rollout/best_of_n/rounds"] == 2
    assert out.metrics["rollout/best_of_n/rejected"] == 4
    assert out.metrics["rollout/best_of_n/topped_up"] == 2
    assert len(engine.requests) == 8


async def test_a_reward_that_always_fails_is_an_error_not_a_zero() -> None:
    async def broken(args: Config, sample: Sample) -> float:
        raise RuntimeError("grader down")

    tok = tiny_tokenizer()
    ctx = RolloutContext(engine=ScriptedEngine("2", tokenizer=tok), tokenizer=tok, reward_fn=broken)
    with use_rollout_context(ctx), pytest.raises(RolloutError, match="failed reward scoring"):
        await best_of_n_rollout(ARGS, 0, RolloutDataSourceWithBuffer(ARGS, tokenizer=tok, dataset=ROWS))
    check_hook(best_of_n_rollout, RolloutFn)


def test_run_trains_two_steps_with_the_custom_rollout(tmp_path: Path) -> None:
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "train/loss" in r]
    assert len(steps) == 2
    assert all("rollout/best_of_n/rounds" in r and r["rollout/num_samples"] == 8 for r in steps)
