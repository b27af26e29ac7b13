"""generate_with_engine, multi-turn helpers and sampling params."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rollout_helpers import CharTokenizer, make_config

from miles_sdk.config import Config
from miles_sdk.engines.base import FinishReason, SamplingParams
from miles_sdk.rollout import (
    RolloutContext,
    RolloutContextError,
    append_tokens,
    extract_tool_call,
    generate_with_engine,
    get_rollout_context,
    sampling_params_from_args,
    stop_at_markers,
    use_rollout_context,
)
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.types import Sample, SampleStatus

TOK = CharTokenizer()


def ctx_for(engine: ScriptedEngine) -> RolloutContext:
    return RolloutContext(engine=engine, tokenizer=TOK)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("stop", Sample.Status.COMPLETED),
        ("length", Sample.Status.TRUNCATED),
        ("abort", Sample.Status.ABORTED),
    ],
)
async def test_single_turn_fills_sample(reason: str, status: SampleStatus) -> None:
    engine = ScriptedEngine(
        {"2+2=": "4!"}, tokenizer=TOK, log_probs=-0.25, finish_reasons=reason, weight_version=3
    )
    sample = Sample(prompt="2+2=")
    with use_rollout_context(ctx_for(engine)):
        out = await generate_with_engine(make_config(), sample, {"max_new_tokens": 8, "temperature": 0.7})
    assert out is sample
    assert sample.tokens == TOK.encode("2+2=4!") and sample.response == "4!" and sample.response_length == 2
    assert sample.rollout_log_probs == [-0.25, -0.25] and sample.weight_versions == [3]
    assert sample.status is status and sample.loss_mask is None
    sample.validate()
    assert engine.requests[0].input_ids == TOK.encode("2+2=")
    assert engine.requests[0].sampling_params == {"max_new_tokens": 8, "temperature": 0.7}


async def test_budget_capped_by_context_length_and_exhausted_budget_skips_engine() -> None:
    engine = ScriptedEngine("abcdefgh", tokenizer=TOK)
    args = make_config(rollout_max_context_len=10)
    with use_rollout_context(ctx_for(engine)):
        s = await generate_with_engine(args, Sample(prompt="123456"), {"max_new_tokens": 8})
        assert engine.requests[0].sampling_params["max_new_tokens"] == 4  # 10 - 6 prompt tokens
        assert s.response == "abcd" and s.status is Sample.Status.TRUNCATED
        full = Sample(prompt="x" * 10)
        await generate_with_engine(args, full, {"max_new_tokens": 8})
    assert full.status is Sample.Status.TRUNCATED and full.response_length == 0 and len(engine.requests) == 1


async def test_resume_continues_from_tokens_with_reduced_budget() -> None:
    engine = ScriptedEngine("XYZ", tokenizer=TOK, weight_version=1)
    partial = Sample(
        prompt="p",
        tokens=TOK.encode("pabc"),
        response="abc",
        response_length=3,
        rollout_log_probs=[-1.0, -1.0, -1.0],
        weight_versions=[0],
        loss_mask=[0, 0, 0],
        status=Sample.Status.ABORTED,
    )
    with use_rollout_context(ctx_for(engine)):
        await generate_with_engine(make_config(), partial, {"max_new_tokens": 10})
    req = engine.requests[0]
    assert req.input_ids == TOK.encode("pabc") and req.sampling_params["max_new_tokens"] == 7
    assert partial.tokens == TOK.encode("pabcXYZ") and partial.response == "abcXYZ"
    assert partial.loss_mask == [0, 0, 0, 1, 1, 1]
    assert partial.rollout_log_probs == [-1.0] * 3 + [-0.5] * 3 and partial.weight_versions == [0, 1]
    assert partial.status is Sample.Status.COMPLETED
    partial.validate()


async def test_chat_prompt_goes_through_template() -> None:
    engine = ScriptedEngine("ok", tokenizer=TOK)
    messages = [{"role": "user", "content": "hi"}]
    with use_rollout_context(ctx_for(engine)):
        await generate_with_engine(make_config(apply_chat_template=True), Sample(prompt=messages), {})
        assert engine.requests[0].text == "<user>hi<assistant>"
        with pytest.raises(ValueError, match="apply_chat_template is off"):
            await generate_with_engine(make_config(), Sample(prompt=messages, index=7), {})


async def test_hf_tokenizer_fits_the_protocol() -> None:
    from miles_sdk.testing.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    engine = ScriptedEngine("fine", tokenizer=tok)
    sample = Sample(prompt=[{"role": "user", "content": "how are you"}])
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        await generate_with_engine(make_config(apply_chat_template=True), sample, {})
    assert sample.response == "fine" and "how are you" in (engine.requests[0].text or "")


def test_sampling_params_from_args_eval_overrides() -> None:
    args = make_config(
        rollout_temperature=0.9,
        rollout_top_k=5,
        eval_temperature=0.0,
        eval_max_response_len=4,
        rollout_stop=["</s>"],
        rollout_stop_token_ids=[2],
    )
    train = sampling_params_from_args(args)
    assert train == {
        "temperature": 0.9,
        "top_p": 1.0,
        "top_k": 5,
        "max_new_tokens": 16,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "stop": ["</s>"],
        "stop_token_ids": [2],
    }
    ev = sampling_params_from_args(args, evaluation=True)
    assert (ev["temperature"], ev["top_k"], ev["max_new_tokens"]) == (0.0, 5, 4)


def test_context_missing_error_says_how_to_install() -> None:
    with pytest.raises(RolloutContextError, match="use_rollout_context"):
        get_rollout_context()


async def tool_generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    """A two-tool-turn generate fn, as a user would write it."""
    params = stop_at_markers(sampling_params, "</tool_call>")
    for _ in range(3):
        sample = await generate_with_engine(args, sample, params)
        call = extract_tool_call(sample.response)
        if call is None or sample.status is not Sample.Status.COMPLETED:
            break
        result = f"<result>{call.upper()}</result>"
        append_tokens(sample, TOK.encode(result), loss_mask_value=0, text=result)
    return sample


async def test_multi_turn_loss_mask_and_log_probs_stay_aligned() -> None:
    script = {"Q": "a<tool_call>x</tool_call>", "</result>": "done"}
    engine = ScriptedEngine(script, tokenizer=TOK, log_probs=-0.1)
    sample = Sample(prompt="Q")
    with use_rollout_context(ctx_for(engine)):
        await tool_generate(make_config(), sample, {"max_new_tokens": 64})
    turn1 = "a<tool_call>x</tool_call>"
    tool = "<result>X</result>"
    assert sample.response == turn1 + tool + "done"
    assert sample.loss_mask == [1] * len(turn1) + [0] * len(tool) + [1] * 4
    assert sample.rollout_log_probs == [-0.1] * len(turn1) + [0.0] * len(tool) + [-0.1] * 4
    assert sample.weight_versions == [0, 0] and sample.status is Sample.Status.COMPLETED
    sample.validate()
    # The second request saw the whole conversation and only the budget left.
    second = engine.requests[1]
    assert second.text == "Q" + turn1 + tool
    assert second.sampling_params["max_new_tokens"] == 64 - len(turn1) - len(tool)
    assert "</tool_call>" in second.sampling_params["stop"]


def test_extract_tool_call() -> None:
    assert extract_tool_call('think <tool_call> {"q": 1} </tool_call>\n') == '{"q": 1}'
    assert extract_tool_call("<tool_call>a</tool_call> and then text") is None
    assert extract_tool_call("no call</tool_call>") is None


def test_append_tokens_rejects_bad_input() -> None:
    s = Sample(tokens=[1, 2], response_length=1)
    with pytest.raises(ValueError, match="loss_mask_value"):
        append_tokens(s, [3], loss_mask_value=2)
    with pytest.raises(ValueError, match="2 token ids but 1 log_probs"):
        append_tokens(s, [3, 4], loss_mask_value=0, log_probs=[0.1])


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 1]), st.booleans()), max_size=8))
def test_append_tokens_keeps_per_token_lists_aligned(ops: list[tuple[int, int, bool]]) -> None:
    s = Sample(tokens=[9, 9], response_length=0)
    expected_mask: list[int] = []
    for n, mask, with_lp in ops:
        append_tokens(s, [1] * n, loss_mask_value=mask, log_probs=[-0.5] * n if with_lp else None)
        expected_mask += [mask] * n
    s.validate()
    assert s.response_length == sum(n for n, _, _ in ops) and len(s.tokens) == 2 + s.response_length
    if ops:
        assert s.loss_mask == expected_mask
    if s.rollout_log_probs is not None:
        assert len(s.rollout_log_probs) == s.response_length


def test_finish_reason_values() -> None:
    from miles_sdk.rollout import status_from_finish_reason

    assert status_from_finish_reason(FinishReason.LENGTH) is Sample.Status.TRUNCATED
