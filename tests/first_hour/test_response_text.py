"""``Sample.response_text()``: the response without special tokens, for comparing with a label."""

from __future__ import annotations

from miles_sdk import Sample
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import ScriptedEngine, tiny_tokenizer


def test_response_keeps_special_tokens_and_response_text_drops_them() -> None:
    sample = Sample(response=" 42<|im_end|>")
    assert sample.response == " 42<|im_end|>"  # Miles-compatible: the raw decoded text
    assert sample.response_text() == "42"
    assert sample.response_text(tiny_tokenizer()) == "42"


def test_inside_a_rollout_the_rollout_tokenizer_decides() -> None:
    tok = tiny_tokenizer()
    # A marker that is not one of this tokenizer's special tokens stays when the tokenizer is known.
    sample = Sample(response="<tool_call>1+1</tool_call> 2<|endoftext|><|im_end|>")
    with use_rollout_context(RolloutContext(engine=ScriptedEngine({}, tokenizer=tok), tokenizer=tok)):
        assert sample.response_text() == "<tool_call>1+1</tool_call> 2"


def test_without_a_tokenizer_common_end_markers_go() -> None:
    assert Sample(response="Paris</s>").response_text() == "Paris"
    assert Sample(response="ok<|eot_id|>").response_text() == "ok"
    assert Sample(response="a < b | c > d").response_text() == "a < b | c > d"
