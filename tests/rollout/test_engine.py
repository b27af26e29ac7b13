"""ScriptedEngine: scripts, budgets, stops, aborts and the request record."""

from __future__ import annotations

import asyncio

import pytest
from rollout_helpers import CharTokenizer

from miles_sdk.engines.base import FinishReason, InferenceEngine, SamplingParams
from miles_sdk.testing.engine import ScriptedEngine, ScriptedRequest

TOK = CharTokenizer()


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def test_is_an_inference_engine() -> None:
    assert isinstance(ScriptedEngine("x", tokenizer=TOK), InferenceEngine)


async def test_mapping_exact_then_latest_key_in_prompt() -> None:
    engine = ScriptedEngine({"Q1": "one", "Q2": "two", "Q": "generic"}, tokenizer=TOK)
    assert (await engine.generate(ids("Q1"), {})).text == "one"
    # Multi-turn prompt: the key that appears latest wins, so the newest turn picks the answer.
    assert (await engine.generate(ids("Q1 ... then Q2 ..."), {})).text == "two"
    with pytest.raises(KeyError, match="no script key matches request 2"):
        await engine.generate(ids("nothing here"), {})


async def test_sequence_script_in_order_then_exhausted() -> None:
    engine = ScriptedEngine(("a", [98, 99]), tokenizer=TOK)
    assert (await engine.generate([1], {})).token_ids == [97]
    assert (await engine.generate([1], {})).token_ids == [98, 99]
    with pytest.raises(IndexError, match="used up"):
        await engine.generate([1], {})


async def test_token_id_response_without_tokenizer_and_callable_with_request() -> None:
    seen: list[ScriptedRequest] = []

    def script(prompt: str | list[int], req: ScriptedRequest) -> list[int]:
        seen.append(req)
        assert prompt == [5, 6]
        return [7, 8, 9]

    engine = ScriptedEngine(script, log_probs=[-0.1, -0.2, -0.3])
    out = await engine.generate([5, 6], {"sampling_seed": 3})
    assert out.token_ids == [7, 8, 9] and out.log_probs == [-0.1, -0.2, -0.3] and out.text is None
    assert seen[0].sampling_params == {"sampling_seed": 3}
    with pytest.raises(TypeError, match="no tokenizer"):
        await ScriptedEngine("text").generate([1], {})


async def test_budget_stop_ids_stop_strings_and_scripted_finish() -> None:
    engine = ScriptedEngine("hello world", tokenizer=TOK)
    out = await engine.generate([1], {"max_new_tokens": 4})
    assert (out.text, out.finish_reason) == ("hell", FinishReason.LENGTH)
    out = await engine.generate([1], {"stop_token_ids": [ord("o")]})
    assert (out.text, out.finish_reason) == ("hello", FinishReason.STOP)
    out = await engine.generate([1], {"stop": ["wor"]})
    assert (out.text, out.finish_reason) == ("hello wor", FinishReason.STOP)  # stop text kept
    forced = ScriptedEngine("ab", tokenizer=TOK, finish_reasons=lambda r: "length")
    assert (await forced.generate([1], {})).finish_reason == FinishReason.LENGTH


async def test_abort_after_is_a_server_side_abort() -> None:
    engine = ScriptedEngine("abcdef", tokenizer=TOK, abort_after=2)
    out = await engine.generate([1], {})
    assert (out.text, out.finish_reason) == ("ab", FinishReason.ABORT)


async def test_abort_all_cuts_delayed_requests_short_and_later_ones_run() -> None:
    engine = ScriptedEngine("abcdefghij", tokenizer=TOK, delays=0.02)
    tasks = [asyncio.create_task(engine.generate([1], {})) for _ in range(3)]
    await asyncio.sleep(0.07)
    assert engine.in_flight == 3
    await engine.abort_all()
    outs = await asyncio.gather(*tasks)
    assert all(o.finish_reason == FinishReason.ABORT for o in outs)
    assert all(0 < len(o.token_ids) < 10 for o in outs)
    assert engine.in_flight == 0 and engine.max_in_flight == 3
    fast = ScriptedEngine("xy", tokenizer=TOK)
    await fast.abort_all()
    assert (await fast.generate([1], {})).finish_reason == FinishReason.STOP


async def test_requests_record_and_weight_versions() -> None:
    engine = ScriptedEngine("ok", tokenizer=TOK)
    params: SamplingParams = {"max_new_tokens": 5, "temperature": 0.5}
    await engine.generate(ids("hi"), params)
    engine.update_weights()
    out = await engine.generate(ids("yo"), params)
    engine.update_weights(10)
    assert engine.weight_version == 10 and out.weight_version == 1
    r0, r1 = engine.requests
    assert (r0.index, r0.text, r0.input_ids, r0.weight_version) == (0, "hi", ids("hi"), 0)
    assert r1.sampling_params == params and r1.sampling_params is not params
    assert r1.output is out and r0.time <= r1.time


def test_mapping_needs_tokenizer() -> None:
    with pytest.raises(TypeError, match="needs tokenizer"):
        ScriptedEngine({"a": "b"})
