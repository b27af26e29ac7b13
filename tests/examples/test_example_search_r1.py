"""examples/search_r1: BM25 by hand, the multi-turn generate fn on a ScriptedEngine, a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from examples.search_r1 import hooks, run
from examples.search_r1.hooks import extract_answer, format_information, generate, make_prompt, reward_fn
from examples.search_r1.retriever import BM25, CORPUS, QUESTIONS
from miles_sdk.config import Config
from miles_sdk.engines.base import FinishReason
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import ScriptedEngine, call_hook, check_hook, make_sample, tiny_tokenizer
from miles_sdk.types import Sample

QUESTION = "What is the capital of France?"
SEARCH = "<search>capital of France</search>"
ANSWER = "<answer>Paris</answer>"


def test_bm25_matches_a_hand_computed_score() -> None:
    # N=2, avgdl=2.5. "dog": df=1, idf=ln(1 + 1.5/1.5)=ln 2. Doc 1: tf=2, len=3:
    # ln2 * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 3 / 2.5)) = ln2 * 5 / 3.725.
    bm25 = BM25(["cat sat", "dog dog sat"])
    assert bm25.score("dog", 1) == pytest.approx(math.log(2) * 5 / 3.725)
    assert bm25.score("dog", 0) == 0.0
    [(best, score)] = bm25.search("dog")
    assert best == 1 and score == pytest.approx(math.log(2) * 5 / 3.725)


def test_bm25_finds_the_document_answering_each_question() -> None:
    bm25 = BM25(CORPUS)
    for question, answer in QUESTIONS:
        best, _ = bm25.search(question, k=1)[0]
        assert answer in CORPUS[best], question
    with pytest.raises(ValueError, match="at least one document"):
        BM25([])


def _engine(script: dict[str, str]) -> tuple[ScriptedEngine, RolloutContext]:
    tok = tiny_tokenizer()
    engine = ScriptedEngine(script, tokenizer=tok)
    return engine, RolloutContext(engine=engine, tokenizer=tok)


async def test_generate_masks_retrieved_text_and_feeds_it_to_the_next_turn() -> None:
    tok = tiny_tokenizer()
    engine, ctx = _engine({QUESTION: SEARCH, "</information>": ANSWER})
    args = Config(label_key="label")
    with use_rollout_context(ctx):
        sample = await generate(
            args, Sample(prompt=make_prompt(QUESTION), label="Paris"), {"max_new_tokens": 200}
        )

    information = format_information([CORPUS[0], CORPUS[3]])  # France first, then "capital city"
    turn_1, info, turn_2 = (tok.encode(t, add_special_tokens=False) for t in (SEARCH, information, ANSWER))
    assert sample.status is Sample.Status.COMPLETED
    assert sample.loss_mask == [1] * len(turn_1) + [0] * len(info) + [1] * len(turn_2)
    assert sample.response == SEARCH + information + ANSWER
    assert sample.response_tokens == turn_1 + info + turn_2
    assert sample.rollout_log_probs == [-0.5] * len(turn_1) + [0.0] * len(info) + [-0.5] * len(turn_2)
    sample.validate()

    assert len(engine.requests) == 2
    second = engine.requests[1]
    assert second.text is not None and CORPUS[0] in second.text
    assert second.input_ids == tok.encode(make_prompt(QUESTION), add_special_tokens=False) + turn_1 + info
    # The response budget covers retrieved tokens too.
    assert engine.requests[0].sampling_params["max_new_tokens"] == 200
    assert second.sampling_params["max_new_tokens"] == 200 - len(turn_1) - len(info)
    assert "</search>" in second.sampling_params["stop"] and "</answer>" in second.sampling_params["stop"]
    assert call_hook(reward_fn, args, sample) == 1.0


async def test_generate_stops_without_an_engine_call_when_the_budget_is_spent() -> None:
    tok = tiny_tokenizer()
    engine, ctx = _engine({QUESTION: SEARCH, "</information>": ANSWER})
    budget = len(tok.encode(SEARCH)) + len(tok.encode(format_information([CORPUS[0], CORPUS[3]])))
    with use_rollout_context(ctx):
        sample = await generate(Config(), Sample(prompt=make_prompt(QUESTION)), {"max_new_tokens": budget})
    assert len(engine.requests) == 1
    assert sample.status is Sample.Status.TRUNCATED
    assert sample.response_length == budget


async def test_generate_gives_up_after_max_turns_without_trailing_information() -> None:
    engine, ctx = _engine({QUESTION: SEARCH, "</information>": "<search>capital of Japan</search>"})
    with use_rollout_context(ctx):
        sample = await generate(Config(), Sample(prompt=make_prompt(QUESTION)), {"max_new_tokens": 400})
    assert len(engine.requests) == hooks.SEARCH_R1_CONFIGS["max_turns"] == 3
    assert sample.response.endswith("</search>")
    assert sample.response.count("<information>") == 2
    assert sample.loss_mask is not None and sample.loss_mask[-1] == 1


async def test_generate_is_single_turn_when_the_model_answers_directly() -> None:
    engine, ctx = _engine({QUESTION: "<answer>Lyon</answer>"})
    with use_rollout_context(ctx):
        sample = await generate(
            Config(), Sample(prompt=make_prompt(QUESTION), label="Paris"), {"max_new_tokens": 50}
        )
    assert len(engine.requests) == 1 and sample.loss_mask is None
    assert call_hook(reward_fn, Config(), sample) == 0.0


async def test_generate_stops_on_truncation() -> None:
    engine, ctx = _engine({QUESTION: SEARCH})
    with use_rollout_context(ctx):
        sample = await generate(Config(), Sample(prompt=make_prompt(QUESTION)), {"max_new_tokens": 5})
    assert len(engine.requests) == 1 and sample.status is Sample.Status.TRUNCATED
    assert (
        engine.requests[0].output is not None
        and engine.requests[0].output.finish_reason is FinishReason.LENGTH
    )


def test_reward_is_exact_match_of_the_last_answer_outside_information() -> None:
    args = Config()
    assert (
        call_hook(reward_fn, args, make_sample("q", " <answer> the PARIS. </answer>", label="Paris")) == 1.0
    )
    assert call_hook(reward_fn, args, make_sample("q", "<answer>Paris France</answer>", label="Paris")) == 0.0
    assert call_hook(reward_fn, args, make_sample("q", "no tags", label="Paris")) == 0.0
    assert extract_answer("<information><answer>x</answer></information>") is None
    assert extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"
    with pytest.raises(ValueError, match="no label"):
        call_hook(reward_fn, args, make_sample("q", "<answer>Paris</answer>"))


def test_hooks_pass_the_trainer_conformance_check() -> None:
    check_hook(generate, GenerateFn)
    check_hook(reward_fn, RewardFn)


def test_run_trains_two_steps_with_the_tiny_policy(tmp_path: Path) -> None:
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert len(steps) == 2
    assert all(math.isfinite(r["train/loss"]) for r in steps)
