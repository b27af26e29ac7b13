"""The fast path's KV cache is sized from what the requests need (issue 13, item 7): it grows
when an admitted request's prompt + budget does not fit, instead of cutting the response short
(a 20-token budget returned 5 tokens, finish LENGTH), and a prompt that cannot fit the model at
all fails that request alone (ABORT with the reason), never the batch. CPU (torch reference
kernels), plus one CUDA test (graphs re-captured after a growth)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine

from .test_fast_pipeline import run_all, same, workload

GREEDY_20: SamplingParams = {"max_new_tokens": 20, "temperature": 0.0, "ignore_eos": True}


def _engine(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, max_seq_len: int, **kw: object
) -> EmbeddedEngine:
    return EmbeddedEngine(model, tok, fast_path=True, max_seq_len=max_seq_len, **kw)  # type: ignore[arg-type]


def _runner(engine: EmbeddedEngine) -> FastRunner:
    runner = engine._runner
    assert isinstance(runner, FastRunner)
    return runner


async def test_a_budget_larger_than_the_cache_is_served_in_full(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    prompt = list(range(3, 13))  # 10 tokens in a cache planned for 16 positions per slot
    small = _engine(model, tok, max_seq_len=16)
    out = await small.generate(prompt, GREEDY_20)
    # Old code: 6 tokens, finish LENGTH, cut by the cache and not by the budget.
    assert len(out.token_ids) == 20 and out.finish_reason is FinishReason.LENGTH
    assert _runner(small).capacity >= 30 and small.runner_stats()["cache_grows"] == 1
    roomy = await _engine(model, tok, max_seq_len=256).generate(prompt, GREEDY_20)
    same([out], [roomy])


@pytest.mark.parametrize("pipeline", [False, True])
async def test_growing_mid_run_keeps_every_request_identical(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, pipeline: bool
) -> None:
    """Requests already decoding keep their keys across a growth (and a chunk in flight is
    resampled identically): same output as a cache sized for everything from the start."""
    prompts, params = workload(tok)
    small = _engine(model, tok, max_seq_len=16, max_batch_size=3, decode_chunk=4, pipeline=pipeline)
    roomy = _engine(model, tok, max_seq_len=256, max_batch_size=3, decode_chunk=4, pipeline=pipeline)
    got = await run_all(small, prompts, params)
    same(got, await run_all(roomy, prompts, params))
    assert small.runner_stats()["cache_grows"] >= 2
    assert [len(o.token_ids) for o in got] == [
        min(int(sp["max_new_tokens"]), 256 - len(p)) if sp.get("ignore_eos") else len(o.token_ids)
        for p, sp, o in zip(prompts, params, got, strict=True)
    ]


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_a_prompt_over_the_context_fails_alone(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, fast: bool
) -> None:
    # Old code: a ValueError out of generate(), which killed the whole rollout.
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_seq_len=64)
    limit = engine._runner.max_context  # the model's max_position_embeddings
    too_long = [5] * limit
    outs: list[EngineOutput] = list(
        await asyncio.gather(
            engine.generate(too_long, GREEDY_20),
            engine.generate([5, 6, 7], GREEDY_20),
            engine.generate([5] * (limit - 4), GREEDY_20),  # fits, with 4 tokens of room
        )
    )
    assert outs[0].finish_reason is FinishReason.ABORT and outs[0].token_ids == []
    assert outs[0].finish_message is not None and f"({limit} tokens)" in outs[0].finish_message
    assert len(outs[1].token_ids) == 20
    assert len(outs[2].token_ids) == 4 and outs[2].finish_reason is FinishReason.LENGTH


async def test_a_cache_that_cannot_grow_aborts_that_request_with_the_reason(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(model, tok, max_seq_len=32)
    runner = _runner(engine)

    def out_of_memory(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise torch.OutOfMemoryError(f"no room for {length}")

    monkeypatch.setattr(runner, "_new_cache", out_of_memory)
    short, long = await asyncio.gather(
        engine.generate([3, 4, 5], {**GREEDY_20, "max_new_tokens": 8}),
        engine.generate([3, 4, 5], {**GREEDY_20, "max_new_tokens": 100}),
    )
    assert len(short.token_ids) == 8
    assert long.finish_reason is FinishReason.ABORT and long.token_ids == []
    assert long.finish_message is not None and "max_engine_batch_size" in long.finish_message
    assert runner.capacity == 32


async def test_the_rollout_marks_the_sample_aborted_with_the_reason(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    from miles_sdk.config import Config
    from miles_sdk.rollout import RolloutContext, generate_with_engine, use_rollout_context
    from miles_sdk.types import Sample

    engine = _engine(model, tok, max_seq_len=64)
    limit = _runner(engine).max_context
    sample = Sample(prompt="", tokens=[5] * (limit + 3), response_length=0)
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        await generate_with_engine(Config(num_rollout=1), sample, {"max_new_tokens": 8})
    assert sample.status is Sample.Status.ABORTED
    assert "longer than the model's context length" in sample.metadata["finish_message"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_cuda_cache_growth_recaptures_graphs_and_serves_full_budgets(tok: PreTrainedTokenizerFast) -> None:
    from .conftest import build_model

    model = build_model(tok).to("cuda")
    prompts, params = workload(tok)
    small = _engine(model, tok, max_seq_len=16, max_batch_size=3, decode_chunk=4)
    roomy = _engine(model, tok, max_seq_len=256, max_batch_size=3, decode_chunk=4)
    got = await run_all(small, prompts, params)
    same(got, await run_all(roomy, prompts, params))
    assert small.runner_stats()["cache_grows"] >= 2
    out = await small.generate(list(range(3, 13)), GREEDY_20)
    assert len(out.token_ids) == 20
