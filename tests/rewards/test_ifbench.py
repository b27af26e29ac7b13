"""rm_type=ifbench: each instruction check, kwargs shapes and clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from miles_sdk.rewards.ifbench import SUPPORTED_INSTRUCTIONS, IFBenchError, ifbench_reward


def _one(instruction: str, response: str, **kwargs: Any) -> float:
    return ifbench_reward(response, {"instruction_id_list": [instruction], "kwargs": [kwargs]})


@pytest.mark.parametrize(
    ("instruction", "kwargs", "good", "bad"),
    [
        ("keywords:existence", {"keywords": ["apple", "pie"]}, "Apple pie is great.", "Apple tart."),
        (
            "keywords:frequency",
            {"keyword": "cat", "frequency": 2, "relation": "at least"},
            "cat and cat",
            "a cat and a dog",
        ),
        (
            "keywords:frequency",
            {"keyword": "cat", "frequency": 2, "relation": "less than"},
            "one cat",
            "cat, cat",
        ),
        ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "all good, badge", "this is Bad"),
        (
            "keywords:letter_frequency",
            {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
            "Zoo zebra",
            "zoo",
        ),
        (
            "length_constraints:number_words",
            {"num_words": 3, "relation": "less than"},
            "two words",
            "three words here",
        ),
        (
            "length_constraints:number_words",
            {"num_words": 3, "relation": "at least"},
            "it's three words",
            "two words",
        ),
        (
            "length_constraints:number_sentences",
            {"num_sentences": 2, "relation": "at least"},
            "One. Two! Three?",
            "Only one.",
        ),
        (
            "length_constraints:number_paragraphs",
            {"num_paragraphs": 2},
            "first\n***\nsecond",
            "one\n***\n***\nthree",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
            "First part.\n\nThen the second.",
            "First part.\n\nAnd the second.",
        ),
        (
            "detectable_content:number_placeholders",
            {"num_placeholders": 2},
            "Dear [name], at [address]",
            "Dear [name]",
        ),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. bye"),
        (
            "detectable_format:number_bullet_lists",
            {"num_bullets": 2},
            "* one\n* two",
            "* one\n* two\n- three",
        ),
        ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
        (
            "detectable_format:number_highlighted_sections",
            {"num_highlights": 2},
            "*one* and *two*",
            "only *one*",
        ),
        (
            "detectable_format:multiple_sections",
            {"section_spliter": "Section", "num_sections": 2},
            "Section 1\na\nSection 2\nb",
            "Section 1\na",
        ),
        ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
        ("detectable_format:title", {}, "<<My Title>>\ntext", "My Title\ntext"),
        ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
        ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi"}, "Say hi. Hi!", "Hi!"),
        (
            "startend:end_checker",
            {"end_phrase": "Is there anything else?"},
            "Done. Is there anything else?",
            "Is there anything else? Done.",
        ),
        ("startend:quotation", {}, '"quoted"', "not quoted"),
        (
            "change_case:capital_word_frequency",
            {"capital_frequency": 2, "capital_relation": "at least"},
            "THIS IS loud",
            "only ONE",
        ),
        ("change_case:english_capital", {}, "ALL CAPS!", "Not All Caps"),
        ("change_case:english_lowercase", {}, "all lower.", "Some Upper"),
        ("punctuation:no_comma", {}, "no commas here", "a, b"),
    ],
)
def test_instruction(instruction: str, kwargs: dict[str, Any], good: str, bad: str) -> None:
    assert _one(instruction, good, **kwargs) == 1.0
    assert _one(instruction, bad, **kwargs) == 0.0


def test_all_instructions_must_hold() -> None:
    metadata = {
        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
        "kwargs": [{}, {}],
    }
    assert ifbench_reward("all lower no commas", metadata) == 1.0
    assert ifbench_reward("all lower, commas", metadata) == 0.0
    assert ifbench_reward("No commas but Upper", metadata) == 0.0


def test_none_kwargs_are_dropped_and_a_shared_dict_applies_to_all() -> None:
    metadata = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None}]}
    assert ifbench_reward("fine", metadata) == 1.0
    shared = {"instruction_id_list": ["keywords:existence"], "kwargs": {"keywords": ["x"]}}
    assert ifbench_reward("has x", shared) == 1.0


def test_unknown_instruction_is_a_clear_error() -> None:
    metadata = {"instruction_id_list": ["punctuation:no_comma", "language:klingon"]}
    with pytest.raises(IFBenchError, match=r"unknown instruction id 'language:klingon'.*\[1\]"):
        ifbench_reward("text", metadata)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        (None, "needs metadata\\['instruction_id_list'\\]"),
        ({"instruction_id_list": []}, "needs metadata"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "2 entries for 1"),
        (
            {"instruction_id_list": ["keywords:existence"], "kwargs": [{}]},
            "'keywords:existence'.*missing kwarg 'keywords'",
        ),
    ],
)
def test_bad_metadata(metadata: dict[str, Any] | None, match: str) -> None:
    with pytest.raises(IFBenchError, match=match):
        ifbench_reward("text", metadata)


def test_supported_set_covers_the_common_checks() -> None:
    assert len(SUPPORTED_INSTRUCTIONS) >= 20
    assert "detectable_format:json_format" in SUPPORTED_INSTRUCTIONS
