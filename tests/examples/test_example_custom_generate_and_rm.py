"""examples/custom_generate_and_rm: the two hooks on a ScriptedEngine, then the same launch through
the CLI (Miles flags, saved tiny checkpoint, JSONL) and through Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.custom_generate_and_rm import run
from examples.custom_generate_and_rm.hooks import ANSWER_CUE, extract_answer, generate, reward_fn
from miles_sdk import cli
from miles_sdk.config import Config
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import (
    ScriptedEngine,
    call_hook,
    check_hook,
    make_sample,
    save_tiny_policy,
    tiny_tokenizer,
)
from miles_sdk.types import Sample

PROMPT = run.dataset()[0]["input"]
CONTEXT = run.dataset()[0]["metadata"]["context"]


async def test_generate_hands_over_the_answer_cue_with_loss_mask_zero() -> None:
    tok = tiny_tokenizer()
    engine = ScriptedEngine(
        {"Question:": "Hmm.<|im_end|>", "Answer:": " Ada Lovelace<|im_end|>"}, tokenizer=tok
    )
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        sample = await generate(Config(), Sample(prompt=PROMPT), {"max_new_tokens": 40})

    first, cue, second = (tok.encode(t) for t in ("Hmm.<|im_end|>", ANSWER_CUE, " Ada Lovelace<|im_end|>"))
    assert len(engine.requests) == 2
    assert sample.loss_mask == [1] * len(first) + [0] * len(cue) + [1] * len(second)
    assert engine.requests[1].input_ids == tok.encode(PROMPT) + first + cue
    assert engine.requests[1].sampling_params["max_new_tokens"] == 40 - len(first) - len(cue)
    assert extract_answer(sample.response) == "Ada Lovelace"


async def test_generate_is_one_call_when_the_model_answers() -> None:
    tok = tiny_tokenizer()
    engine = ScriptedEngine("Answer: Ada Lovelace<|im_end|>", tokenizer=tok)
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        sample = await generate(Config(), Sample(prompt=PROMPT), {"max_new_tokens": 40})
    assert len(engine.requests) == 1 and sample.loss_mask is None


def test_reward_is_f1_halved_when_not_grounded() -> None:
    def score(response: str) -> float:
        sample = make_sample(PROMPT, response, label="Ada Lovelace", metadata={"context": CONTEXT})
        return float(call_hook(reward_fn, Config(), sample))

    assert score("Answer: Ada Lovelace<|im_end|>") == 1.0
    assert score("Answer: Lovelace") == pytest.approx(2 / 3)  # p=1, r=1/2; grounded
    assert score("Answer: Ada Byron") == pytest.approx(0.25)  # p=r=1/2 -> 0.5, "byron" not in passage
    assert score("Answer:") == 0.0
    with pytest.raises(ValueError, match=r"metadata\['context'\]"):
        call_hook(reward_fn, Config(), make_sample(PROMPT, "Answer: Ada", label="Ada"))
    check_hook(generate, GenerateFn)
    check_hook(reward_fn, RewardFn)


def test_the_launch_runs_through_the_cli_with_miles_flags(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    save_tiny_policy(checkpoint, "unit", seed=0)
    data = run.write_jsonl(tmp_path / "prompts.jsonl", run.dataset())
    code = cli.main(
        [
            "train",
            "--hf-checkpoint",
            str(checkpoint),
            "--prompt-data",
            str(data),
            "--label-key",
            "label",
            "--custom-generate-function-path",
            "examples.custom_generate_and_rm.hooks.generate",
            "--custom-rm-path",
            "examples.custom_generate_and_rm.hooks.reward_fn",
            "--metadata-key",
            "metadata",
            "--rollout-max-response-len",
            "16",
            "--rollout-batch-size",
            "2",
            "--n-samples-per-prompt",
            "2",
            "--num-rollout",
            "2",
            "--device",
            "cpu",
            "--no-progress-bar",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in steps if "train/loss" in r]) == 2
    assert all(r["rollout/reward_failed"] == 0 for r in steps if "rollout/reward_failed" in r)


def test_the_launch_runs_from_python(tmp_path: Path) -> None:
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in steps if "train/loss" in r]) == 2
