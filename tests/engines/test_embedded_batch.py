"""EmbeddedEngine.generate_batch: the same answers as that many generate calls made in order,
one wake-up for the caller, on_done per request, and errors, cancellation and abort as for
generate."""

from __future__ import annotations

import asyncio

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine

TEXTS = ["hello world", "abc", "What is 2 + 2?", "x", "a much longer prompt than the others"]


def same(a: EngineOutput, b: EngineOutput) -> bool:
    return (a.token_ids, a.log_probs, a.finish_reason, a.text, a.weight_version) == (
        b.token_ids,
        b.log_probs,
        b.finish_reason,
        b.text,
        b.weight_version,
    )


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_a_batch_answers_as_generate_calls_in_order(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    prompts = [tok.encode(t) for t in TEXTS]
    shared: SamplingParams = {"temperature": 1.0, "max_new_tokens": 6}
    # Default seeds (none given) are handed out in request order; one request sets its own seed,
    # one has no budget, one has its own stop ids: parsed per params dict, shared or not.
    params: list[SamplingParams] = [
        shared,
        shared,
        {"temperature": 1.0, "max_new_tokens": 6, "sampling_seed": 77},
        {"max_new_tokens": 0},
        {"temperature": 0.5, "max_new_tokens": 9, "stop_token_ids": [5]},
    ]
    one = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=3, seed=11)
    singles = list(
        await asyncio.gather(*(one.generate(p, sp) for p, sp in zip(prompts, params, strict=True)))
    )
    many = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=3, seed=11)
    seen: list[int] = []
    batch = await many.generate_batch(prompts, params, on_done=lambda i, out: seen.append(i))
    assert all(same(a, b) for a, b in zip(singles, batch, strict=True))
    assert sorted(seen) == list(range(len(prompts)))
    assert seen[0] == 3  # answered at once: no budget
    assert batch[3].token_ids == [] and batch[3].finish_reason is FinishReason.LENGTH
    # The next default seed continues after the batch, as after five generate calls.
    after_one = await one.generate(prompts[0], shared)
    after_many = await many.generate(prompts[0], shared)
    assert same(after_one, after_many)


async def test_on_done_reports_each_request_as_it_finishes(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    engine = EmbeddedEngine(model, tok, max_batch_size=8)
    prompts = [tok.encode(t) for t in TEXTS]
    params: list[SamplingParams] = [{"max_new_tokens": n, "ignore_eos": True} for n in (1, 2, 3, 4, 5)]
    finished_while_waiting: list[int] = []

    def on_done(index: int, output: EngineOutput) -> None:
        finished_while_waiting.append(len(output.token_ids))

    outputs = await engine.generate_batch(prompts, params, on_done=on_done)
    # Requests finish at different steps (on_done each time), and the batch resolves once, after the last.
    assert finished_while_waiting == [1, 2, 3, 4, 5]
    assert [len(o.token_ids) for o in outputs] == [1, 2, 3, 4, 5]


async def test_a_bad_request_raises_before_any_is_queued(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok)
    params: list[SamplingParams] = [{"max_new_tokens": 3}, {"top_p": 0.0}]
    with pytest.raises(ValueError, match="top_p") as info:
        await engine.generate_batch([[5, 6], [5, 6]], params)
    assert "request 1 of a generate_batch of 2" in "\n".join(getattr(info.value, "__notes__", []))
    assert not engine._waiting and not engine._active
    with pytest.raises(ValueError, match="2 input_ids but 1 sampling_params"):
        await engine.generate_batch([[5], [6]], [{}])


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_cancelling_a_batch_cancels_its_requests(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=2)
    sp: SamplingParams = {"max_new_tokens": 200, "ignore_eos": True}
    done: list[int] = []
    task = asyncio.create_task(
        engine.generate_batch(
            [tok.encode(t) for t in TEXTS[:3]], [sp] * 3, on_done=lambda i, _: done.append(i)
        )
    )
    while not engine._active or min(len(r.tokens) for r in engine._active.values()) < 2:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.abort_all()  # a cancelled request is not answered again (on_done stays silent)
    assert done == []
    again = await engine.generate(tok.encode("abc"), {"max_new_tokens": 4, "ignore_eos": True})
    assert len(again.token_ids) == 4
    assert not engine._active and not engine._waiting


async def test_abort_answers_a_batch_with_the_tokens_so_far(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, max_batch_size=2)
    sp: SamplingParams = {"max_new_tokens": 200, "ignore_eos": True}
    task = asyncio.create_task(engine.generate_batch([tok.encode(t) for t in TEXTS[:3]], [sp] * 3))
    while not engine._active or min(len(r.tokens) for r in engine._active.values()) < 3:
        await asyncio.sleep(0.005)
    await engine.abort_all()
    outs = await asyncio.wait_for(task, timeout=5.0)
    assert [o.finish_reason for o in outs] == [FinishReason.ABORT] * 3
    assert min(len(o.token_ids) for o in outs[:2]) >= 3 and outs[2].token_ids == []
    assert all(len(o.token_ids) == len(o.log_probs) for o in outs)
    assert outs[0].text == tok.decode(outs[0].token_ids, skip_special_tokens=True)
