"""The fast runner's pipelined decode (the next chunk launched before the previous one is read)
against the unpipelined one: same tokens and log-probs, no tokens leaking across slot reuse, and
in-flight work drained on admission, weight updates and reset. CPU (torch reference kernels),
plus one CUDA test (graphs, pinned copies, events)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines._runner import StepResult
from miles_sdk.engines._sampling import RowParams
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine

from .conftest import build_model

CPU = torch.device("cpu")


def workload(tok: PreTrainedTokenizerFast, n: int = 11) -> tuple[list[list[int]], list[SamplingParams]]:
    """Mixed budgets, greedy/sampled/top-p rows, and one prompt near the end of the context."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 12, (n,), generator=gen).tolist()
    prompts = [torch.randint(3, len(tok), (m,), generator=gen).tolist() for m in lengths]
    prompts[3] = torch.randint(3, len(tok), (243,), generator=gen).tolist()  # 13 tokens of room left
    params: list[SamplingParams] = []
    for i in range(n):
        sp: SamplingParams = {
            "max_new_tokens": [5, 23, 1, 40, 17, 9, 31, 2, 12, 26, 8][i % 11],
            "sampling_seed": 7 + i,
        }
        sp["temperature"] = 0.0 if i % 4 == 0 else 1.0
        if i % 3 == 1:
            sp["top_p"] = 0.9
        sp["ignore_eos"] = i % 2 == 0 or i == 3
        params.append(sp)
    return prompts, params


async def run_all(
    engine: EmbeddedEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[EngineOutput]:
    return list(
        await asyncio.gather(*(engine.generate(p, sp) for p, sp in zip(prompts, params, strict=True)))
    )


def engine(model: PreTrainedModel, tok: PreTrainedTokenizerFast, pipeline: bool, **kw: int) -> EmbeddedEngine:
    return EmbeddedEngine(model, tok, fast_path=True, pipeline=pipeline, **kw)  # type: ignore[arg-type]


def same(a: list[EngineOutput], b: list[EngineOutput], bitwise: bool = False) -> None:
    """Same tokens and stops. Log-probs are bit-identical only when every decode step ran in the
    same batch bucket (and every prefill in the same group): a speculative chunk still carries
    the rows that the previous chunk finished, and a new request joins one chunk later, so its
    rows can go through a GEMM of another height (not bitwise row-independent, even on CPU)."""
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids
        assert x.finish_reason == y.finish_reason
        if bitwise:
            assert x.log_probs == y.log_probs
        else:
            torch.testing.assert_close(
                torch.tensor(x.log_probs), torch.tensor(y.log_probs), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("chunk", [1, 4, 16])
async def test_pipelined_output_is_identical(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, chunk: int
) -> None:
    prompts, params = workload(tok)
    ref = await run_all(engine(model, tok, False, max_batch_size=3, decode_chunk=chunk), prompts, params)
    # Stop tokens picked from the reference end some requests mid-chunk (and mid-flight).
    for i in (1, 4, 6, 9):
        if len(ref[i].token_ids) > 4:
            params[i].update(
                {"stop_token_ids": [ref[i].token_ids[len(ref[i].token_ids) // 2]], "ignore_eos": False}
            )
    ref = await run_all(engine(model, tok, False, max_batch_size=3, decode_chunk=chunk), prompts, params)
    assert sum(o.finish_reason is FinishReason.STOP for o in ref) >= 3
    assert len(ref[3].token_ids) == 13  # cut by the context, not the budget of 40
    pipe = engine(model, tok, True, max_batch_size=3, decode_chunk=chunk)
    same(await run_all(pipe, prompts, params), ref)
    stats = pipe.runner_stats()
    assert stats["spec_chunks"] > 0
    runner = pipe._runner
    assert isinstance(runner, FastRunner)
    assert runner._inflight is None and not runner._host_pos  # idle: nothing left in flight
    # Again on the same engine (slots and buffers reused), and with every request in one batch.
    same(await run_all(pipe, prompts, params), ref)
    wide = [engine(model, tok, pipeline, max_batch_size=16, decode_chunk=chunk) for pipeline in (False, True)]
    same(await run_all(wide[1], prompts, params), await run_all(wide[0], prompts, params))


async def test_counters_when_nothing_is_wasted(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    # Equal budgets, no stops: after the prefill, every chunk is launched before the previous
    # one is read, the last one exactly fills the budget, and the state is uploaded once.
    prompts = [tok.encode(t) for t in ("hello world", "abc", "x", "What is 2 + 2?")]
    sp: SamplingParams = {"max_new_tokens": 17, "ignore_eos": True, "temperature": 1.0}
    params: list[SamplingParams] = [{**sp, "sampling_seed": i} for i in range(4)]
    pipe = engine(model, tok, True, decode_chunk=4)
    plain = engine(model, tok, False, decode_chunk=4)
    same(await run_all(pipe, prompts, params), await run_all(plain, prompts, params), bitwise=True)
    p, q = pipe.runner_stats(), plain.runner_stats()
    assert (p["spec_chunks"], p.get("spec_tokens_discarded", 0), p["decode_steps"], p["uploads"]) == (
        4,
        0,
        16,
        1,
    )
    assert (q.get("spec_chunks", 0), q["decode_steps"], q["uploads"]) == (0, 16, 1)


async def test_early_stops_discard_speculative_tokens(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    prompts, params = workload(tok, 4)
    for sp in params:
        sp.update({"max_new_tokens": 30, "ignore_eos": True})
    ref = await run_all(engine(model, tok, False, decode_chunk=4), prompts, params)
    params[0].update({"stop_token_ids": [ref[0].token_ids[2]], "ignore_eos": False})
    pipe = engine(model, tok, True, decode_chunk=4)
    outs = await run_all(pipe, prompts, params)
    assert outs[0].finish_reason is FinishReason.STOP and len(outs[0].token_ids) <= 3
    assert [o.token_ids for o in outs[1:]] == [o.token_ids for o in ref[1:]]
    # Request 0 stopped in the first chunk; the chunk already launched behind it is dropped.
    assert pipe.runner_stats()["spec_tokens_discarded"] >= 4


async def test_abort_then_reuse(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    prompts, params = workload(tok, 6)
    for sp in params:
        sp.update({"max_new_tokens": 200, "ignore_eos": True})
    ref = await run_all(engine(model, tok, False, max_batch_size=2, decode_chunk=4), prompts, params)
    pipe = engine(model, tok, True, max_batch_size=2, decode_chunk=4)
    tasks = [asyncio.create_task(pipe.generate(p, sp)) for p, sp in zip(prompts, params, strict=True)]
    while not pipe._active or min(len(r.tokens) for r in pipe._active.values()) < 9:
        await asyncio.sleep(0.001)
    await pipe.abort_all()
    outs = await asyncio.gather(*tasks)
    for out, r in zip(outs, ref, strict=True):
        assert out.finish_reason is FinishReason.ABORT
        assert out.token_ids == r.token_ids[: len(out.token_ids)]
        assert out.log_probs == r.log_probs[: len(out.token_ids)]
    # The aborted slots are refilled; nothing from the old requests leaks into the new ones.
    short: list[SamplingParams] = [{**sp, "max_new_tokens": 10 + i} for i, sp in enumerate(params)]
    again = await run_all(pipe, prompts, short)
    for out, r in zip(again, ref, strict=True):
        assert out.token_ids == r.token_ids[: len(out.token_ids)] and out.finish_reason is FinishReason.LENGTH


# -- the runner alone: slot reuse, weight updates, reset --------------------------------------


def runner(model: PreTrainedModel, pipeline: bool) -> FastRunner:
    return FastRunner(model, CPU, max_batch_size=4, max_seq_len=128, decode_chunk=4, pipeline=pipeline)


def in_flight(r: FastRunner) -> bool:
    return r._inflight is not None


def step(r: FastRunner, max_tokens: int) -> StepResult:
    with torch.inference_mode():
        return r.step(max_tokens)


def test_released_slot_tokens_never_reach_its_next_request(tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=1)
    r = runner(model, True)
    sampled = RowParams(1.0, 1.0, -1, 11)
    r.admit(0, [5, 6, 7], sampled)
    r.admit(1, [8, 9], RowParams(0.0, 1.0, -1, 12))
    step(r, 50)  # prefill, then a chunk launched behind it
    first = step(r, 49)  # returns that chunk, launches the next
    assert sorted(first) == [0, 1] and r._inflight is not None and r._inflight.slots == [0, 1]
    r.release(1)
    assert r._inflight.slots == [0] and r.stats["spec_tokens_discarded"] == 4
    new_prompt = [20, 21, 22, 23]
    r.admit(1, new_prompt, RowParams(1.0, 1.0, -1, 99))
    out = step(r, 45)  # drains slot 0's chunk, then prefills slot 1
    assert len(out[0][0]) == 4 and len(out[1][0]) == 1
    nxt = step(r, 41)
    # Slot 1 reports what a fresh runner reports for the new request, slot 0 what it reports
    # for the old one alone (log-probs up to the GEMM height: batch 2 there, 1 here).
    cases = [  # (slot, prompt, params, steps of a lone runner to skip, what slot got here)
        (1, new_prompt, RowParams(1.0, 1.0, -1, 99), 0, [out[1], nxt[1]]),
        (0, [5, 6, 7], sampled, 1, [first[0], out[0], nxt[0]]),
    ]
    for slot, prompt, params, skip, got in cases:
        alone = runner(model, False)
        alone.admit(slot, prompt, params)
        want = [step(alone, 50)[slot] for _ in range(skip + len(got))][skip:]
        assert [t for t, _ in want] == [t for t, _ in got]
        torch.testing.assert_close([lp for _, lp in want], [lp for _, lp in got], atol=1e-5, rtol=1e-5)


def test_weights_updated_drains_and_resamples_with_new_weights(tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=2)
    runs: dict[bool, list[StepResult]] = {}
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    for pipeline in (False, True):
        model.load_state_dict(snapshot)
        r = runner(model, pipeline)
        for s in range(3):
            r.admit(s, [4 + s, 9, 10 + s], RowParams(1.0, 1.0, -1, s))
        outs = [step(r, 40), step(r, 39)]
        assert (r._inflight is not None) == pipeline
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)  # the trainer's in-place optimizer step
        r.weights_updated()
        assert r._inflight is None
        assert r.stats["spec_tokens_discarded"] == (12 if pipeline else 0)
        outs += [step(r, 35), step(r, 31)]
        runs[pipeline] = outs
    assert runs[True] == runs[False]


def test_reset_drains_and_starts_clean(tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=3)
    r = runner(model, True)
    r.admit(2, [4, 5, 6], RowParams(1.0, 1.0, -1, 1))
    step(r, 30)
    step(r, 29)
    assert in_flight(r)
    r.reset()
    assert not in_flight(r) and not r._host_pos and not r._params
    r.admit(2, [7, 8], RowParams(1.0, 0.8, -1, 5))
    fresh = runner(model, False)
    fresh.admit(2, [7, 8], RowParams(1.0, 0.8, -1, 5))
    for budget in (9, 8, 4):
        assert step(r, budget) == step(fresh, budget)


# -- on a GPU: CUDA graphs, pinned copies and events -------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_cuda_pipelined_output_is_identical(tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=4)
    torch.nn.Module.to(model, torch.device("cuda"))
    prompts, params = workload(tok)
    for i in (1, 6):
        params[i].update({"stop_token_ids": [tok.eos_token_id or 0, 100 + i], "ignore_eos": False})
    plain = engine(model, tok, False, max_batch_size=3, decode_chunk=4)
    pipe = engine(model, tok, True, max_batch_size=3, decode_chunk=4)
    assert pipe.fast_path and isinstance(pipe._runner, FastRunner) and pipe._runner._graphs_on
    # fp32 (no TF32): GEMMs of another height round differently, but never flip a token here.
    same(await run_all(pipe, prompts, params), await run_all(plain, prompts, params))
    assert pipe.runner_stats()["spec_chunks"] > 0 and pipe._runner._inflight is None
    # bf16, one batch, equal budgets (the W1 shape): every step in the same bucket, bit-identical.
    torch.nn.Module.to(model, torch.bfloat16)
    even: list[SamplingParams] = [{**sp, "max_new_tokens": 37, "ignore_eos": True} for sp in params]
    outs = [await run_all(engine(model, tok, p, max_batch_size=16), prompts, even) for p in (False, True)]
    same(outs[1], outs[0], bitwise=True)


@pytest.mark.parametrize("reused", [False, True])
@pytest.mark.parametrize("pipeline", [False, True])
async def test_group_reads_the_leads_prompt_keys_until_it_is_released(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, pipeline: bool, reused: bool
) -> None:
    """Four samples of one prompt read its keys from the lead's slot. The lead stops first; its
    row then decodes as padding at position 0 of its slot (or, ``reused``, the slot takes a new
    prompt) while the other three decode on: they must read their own copies from then on. Same
    output as with every row reading its own copy."""
    gen = torch.Generator().manual_seed(5)
    shared = torch.randint(3, len(tok), (12,), generator=gen).tolist()
    prompts = [shared] * 4 + [torch.randint(3, len(tok), (12,), generator=gen).tolist()] * reused
    params: list[SamplingParams] = [
        {"max_new_tokens": 3 if i == 0 else 30, "ignore_eos": True, "sampling_seed": 11 + i}
        for i in range(len(prompts))
    ]
    outputs = []
    for share in (False, True):
        eng = engine(model, tok, pipeline, max_batch_size=4, decode_chunk=2)
        runner = eng._runner
        assert isinstance(runner, FastRunner)
        runner._share_prompt_reads = share
        outputs.append(await run_all(eng, prompts, params))
        assert not runner._host_src and not runner._members  # every slot released
    same(outputs[1], outputs[0], bitwise=True)
    assert [len(o.token_ids) for o in outputs[1]] == [3, 30, 30, 30, 30][: len(prompts)]
