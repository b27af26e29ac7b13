"""EmbeddedEngine against transformers itself: greedy == generate, log-probs == a full forward,
batching changes nothing, stops and budgets, abort, and live weight updates."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.engines.base import EngineOutput, FinishReason, InferenceEngine, SamplingParams
from miles_sdk.engines.embedded import EmbeddedEngine

from .conftest import build_model, logits_of

TEXTS = ["hello world", "abc", "What is 2 + 2?", "x", "a much longer prompt than the others, really"]


def hf_greedy(model: PreTrainedModel, prompt: list[int], n: int) -> list[int]:
    # transformers' annotations make mypy read ``generate`` as a Tensor attribute.
    generate = cast(Callable[..., torch.Tensor], getattr(model, "generate"))  # noqa: B009
    out = generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return [int(t) for t in out[0, len(prompt) :]]


def full_forward_logps(
    model: PreTrainedModel, prompt: list[int], out: EngineOutput, temp: float
) -> torch.Tensor:
    ids = torch.tensor([prompt + out.token_ids])
    logits = logits_of(model, ids)[0, len(prompt) - 1 : -1]
    logp = torch.log_softmax(logits / (temp if temp > 0 else 1.0), dim=-1)
    return logp.gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)


async def run_all(
    engine: EmbeddedEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[EngineOutput]:
    return list(
        await asyncio.gather(*(engine.generate(p, sp) for p, sp in zip(prompts, params, strict=True)))
    )


def test_is_an_inference_engine(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    assert isinstance(EmbeddedEngine(model, tok), InferenceEngine)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_greedy_matches_transformers_generate(
    fast: bool, tok: PreTrainedTokenizerFast, arch: str
) -> None:
    model = build_model(tok, arch, seed=3)
    prompts = [tok.encode(t) for t in TEXTS]
    # Two slots for five prompts: finished slots are refilled while others are mid-decode.
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=2)
    lens = [9, 14, 5, 12, 7]
    outs = await run_all(
        engine, prompts, [{"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True} for n in lens]
    )
    for prompt, n, out in zip(prompts, lens, outs, strict=True):
        ref = hf_greedy(model, prompt, n)
        assert out.token_ids == ref
        assert len(set(ref)) > 2, "the test model should not repeat one token"
        assert out.finish_reason is FinishReason.LENGTH
        torch.testing.assert_close(
            torch.tensor(out.log_probs), full_forward_logps(model, prompt, out, 0.0), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_sampled_logprobs_match_full_forward(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=8)
    prompts = [tok.encode(t) for t in TEXTS]
    params: list[SamplingParams] = [
        {"temperature": 0.7, "max_new_tokens": 10, "ignore_eos": True, "sampling_seed": 11},
        {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 10, "ignore_eos": True},
        {"temperature": 1.3, "top_k": 5, "max_new_tokens": 10, "ignore_eos": True},
        {"temperature": 0.0, "max_new_tokens": 10, "ignore_eos": True},
        {"temperature": 0.5, "top_k": 3, "top_p": 0.8, "max_new_tokens": 10, "ignore_eos": True},
    ]
    outs = await run_all(engine, prompts, params)
    for prompt, sp, out in zip(prompts, params, outs, strict=True):
        assert len(out.token_ids) == 10 and len(out.log_probs) == 10
        ref = full_forward_logps(model, prompt, out, sp.get("temperature", 1.0))
        torch.testing.assert_close(torch.tensor(out.log_probs), ref, atol=1e-4, rtol=1e-4)
    # top-k=3 can only ever pick one of the three best tokens under the full forward.
    prompt, out = prompts[4], outs[4]
    logits = logits_of(model, torch.tensor([prompt + out.token_ids]))[0, len(prompt) - 1 : -1]
    top3 = logits.topk(3, dim=-1).indices
    assert all(int(t) in top3[i].tolist() for i, t in enumerate(out.token_ids))


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_batching_does_not_change_seeded_samples(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    prompts = [tok.encode(t) for t in TEXTS]
    params: list[SamplingParams] = [
        {
            "temperature": 1.0,
            "max_new_tokens": 6 + i,
            "ignore_eos": True,
            "sampling_seed": 100 + i,
            "top_p": 0.95,
        }
        for i in range(len(prompts))
    ]
    together = await run_all(EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=8), prompts, params)
    alone_engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=1)
    for prompt, sp, out in zip(prompts, params, together, strict=True):
        single = await alone_engine.generate(prompt, sp)
        assert single.token_ids == out.token_ids
        torch.testing.assert_close(
            torch.tensor(single.log_probs), torch.tensor(out.log_probs), atol=1e-5, rtol=1e-5
        )
    # Different seeds give different samples (else the seed would be ignored).
    a = await alone_engine.generate(prompts[0], {**params[0], "sampling_seed": 1, "max_new_tokens": 20})
    b = await alone_engine.generate(prompts[0], {**params[0], "sampling_seed": 2, "max_new_tokens": 20})
    assert a.token_ids != b.token_ids


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_stop_token_ids_eos_and_ignore_eos(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, fast_path=fast)
    prompt = tok.encode(TEXTS[2])
    free = await engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True})
    stop_at = free.token_ids[4]
    first = free.token_ids.index(stop_at)
    out = await engine.generate(
        prompt, {"temperature": 0.0, "max_new_tokens": 12, "stop_token_ids": [stop_at]}
    )
    assert out.token_ids == free.token_ids[: first + 1]
    assert out.finish_reason is FinishReason.STOP
    # The model's EOS ids (generation_config, besides the tokenizer's) stop too, unless ignore_eos.
    model.generation_config.eos_token_id = [stop_at]
    try:
        eos_engine = EmbeddedEngine(model, tok, fast_path=fast)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    eos_out = await eos_engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 12})
    assert eos_out.token_ids == out.token_ids and eos_out.finish_reason is FinishReason.STOP
    ignored = await eos_engine.generate(
        prompt, {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
    )
    assert ignored.token_ids == free.token_ids and ignored.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_stop_strings_keep_the_stop_text(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, fast_path=fast)
    prompt = tok.encode(TEXTS[0])
    free = await engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 16, "ignore_eos": True})
    assert free.text is not None
    # A printable two-character run: random byte tokens also decode to partial UTF-8.
    found = re.search(r"[!-~]{2}", free.text)
    assert found is not None, free.text
    stop = found.group(0)
    out = await engine.generate(
        prompt, {"temperature": 0.0, "max_new_tokens": 16, "stop": [stop], "ignore_eos": True}
    )
    assert out.finish_reason is FinishReason.STOP
    assert out.text is not None and stop in out.text
    assert free.token_ids[: len(out.token_ids)] == out.token_ids
    # It stopped at the first token that completed the string.
    assert stop not in tok.decode(out.token_ids[:-1])


async def test_max_new_tokens_zero_and_budget(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    engine = EmbeddedEngine(model, tok)
    empty = await engine.generate([5, 6], {"max_new_tokens": 0})
    assert empty.token_ids == [] and empty.finish_reason is FinishReason.LENGTH
    three = await engine.generate([5, 6], {"max_new_tokens": 3, "ignore_eos": True})
    assert len(three.token_ids) == 3 and three.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_abort_returns_promptly_with_partial_tokens(
    fast: bool, model: PreTrainedModel, tok: PreTrainedTokenizerFast
) -> None:
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=2)
    sp: SamplingParams = {"max_new_tokens": 200, "ignore_eos": True}
    tasks = [asyncio.create_task(engine.generate(tok.encode(t), sp)) for t in TEXTS[:3]]
    while not engine._active or min(len(r.tokens) for r in engine._active.values()) < 3:
        await asyncio.sleep(0.005)
    await engine.abort_all()
    outs = await asyncio.wait_for(asyncio.gather(*tasks), timeout=5.0)
    assert all(o.finish_reason is FinishReason.ABORT for o in outs)
    assert max(len(o.token_ids) for o in outs) >= 3
    assert all(len(o.token_ids) < 200 and len(o.token_ids) == len(o.log_probs) for o in outs)
    assert outs[2].token_ids == []  # third request never got a slot
    # The engine keeps serving after an abort.
    again = await engine.generate(tok.encode("abc"), {"max_new_tokens": 4, "ignore_eos": True})
    assert len(again.token_ids) == 4 and again.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_update_weights_samples_from_new_weights(fast: bool, tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=5)
    model.train()
    engine = EmbeddedEngine(model, tok, fast_path=fast)
    prompt = tok.encode(TEXTS[2])
    sp: SamplingParams = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
    before = await engine.generate(prompt, sp)
    assert before.weight_version == 0
    # The training module is untouched by generation: still in train mode, grads still on.
    assert model.training and all(m.training for m in model.modules())
    assert torch.is_grad_enabled()
    # One optimizer step on the shared module, pushing the first greedy token down.
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    logits = model.forward(input_ids=torch.tensor([prompt])).logits[0, -1]
    logits.log_softmax(-1)[before.token_ids[0]].backward()
    opt.step()
    engine.update_weights()
    after = await engine.generate(prompt, sp)
    assert after.weight_version == 1
    assert after.token_ids != before.token_ids
    model.train(False)
    assert after.token_ids == hf_greedy(model, prompt, 8)
    engine.update_weights(7)
    assert engine.weight_version == 7
    with pytest.raises(ValueError, match="version 3 < current 7"):
        engine.update_weights(3)


def test_works_across_event_loops(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> None:
    engine = EmbeddedEngine(model, tok)
    sp: SamplingParams = {"temperature": 0.0, "max_new_tokens": 5, "ignore_eos": True}
    first = asyncio.run(engine.generate([7, 8, 9], sp))
    second = asyncio.run(engine.generate([7, 8, 9], sp))
    assert first.token_ids == second.token_ids


@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ([], {}, "input_ids is empty"),
        ([10**6], {}, "outside the vocabulary"),
        ([1], {"temperature": -1.0}, "temperature"),
        ([1], {"top_p": 0.0}, "top_p"),
        ([1], {"max_new_tokens": -2}, "max_new_tokens"),
        ([1], {"stop": [""]}, "stop"),
        # A prompt over the context is no error: that request alone is aborted, with the reason
        # (tests/engines/test_fast_capacity.py::test_a_prompt_over_the_context_fails_alone).
    ],
)
async def test_bad_requests_name_the_culprit(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerFast,
    prompt: list[int],
    params: SamplingParams,
    match: str,
) -> None:
    engine = EmbeddedEngine(model, tok)
    with pytest.raises((ValueError, TypeError), match=match):
        await engine.generate(prompt, params)


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
async def test_identical_prompts_share_prefill_but_not_samples(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, fast: bool
) -> None:
    # A GRPO group: one prompt, n samples. The fast path prefills it once and copies the cache.
    engine = EmbeddedEngine(model, tok, fast_path=fast, max_batch_size=8)
    prompt = tok.encode(TEXTS[4])
    params: list[SamplingParams] = [
        {"temperature": 1.0, "max_new_tokens": 12, "ignore_eos": True, "sampling_seed": i} for i in range(6)
    ]
    others = [tok.encode(TEXTS[0]), tok.encode(TEXTS[1])]
    sp: SamplingParams = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
    outs = await run_all(engine, [prompt] * 6 + others, [*params, sp, sp])
    assert len({tuple(o.token_ids) for o in outs[:6]}) > 1
    for out in outs[:6]:
        torch.testing.assert_close(
            torch.tensor(out.log_probs), full_forward_logps(model, prompt, out, 1.0), atol=1e-4, rtol=1e-4
        )
    for p, out in zip(others, outs[6:], strict=True):
        assert out.token_ids == hf_greedy(model, p, 12)


async def test_fast_path_rebinds_replaced_parameters(tok: PreTrainedTokenizerFast) -> None:
    # A trainer that assigns new tensors (load_state_dict(assign=True), FSDP resharding) instead
    # of updating in place must still be picked up by update_weights().
    model = build_model(tok, seed=8)
    engine = EmbeddedEngine(model, tok, fast_path=True)
    prompt = tok.encode(TEXTS[1])
    sp: SamplingParams = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
    before = await engine.generate(prompt, sp)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight = torch.nn.Parameter(torch.randn_like(layer.mlp.down_proj.weight))
            layer.self_attn.q_proj.weight.mul_(-1.5)
    engine.update_weights()
    after = await engine.generate(prompt, sp)
    assert after.token_ids == hf_greedy(model, prompt, 8) != before.token_ids


async def test_inference_dtype_copy_is_refreshed_and_cast_on_update() -> None:
    from miles_sdk.testing import tiny_policy

    model, tok = tiny_policy("unit", seed=0)
    engine = EmbeddedEngine(model, tok, dtype=torch.float64)
    assert next(engine._model.parameters()).dtype == torch.float64  # a copy in the inference dtype
    prompt = tok.encode("1+1=", add_special_tokens=False)
    before = await engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 2})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    stale = await engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 2})
    assert stale.log_probs == before.log_probs  # the copy is not live
    engine.update_weights()
    fresh = await engine.generate(prompt, {"temperature": 0.0, "max_new_tokens": 2})
    assert fresh.log_probs != before.log_probs
    await engine.abort_all()
