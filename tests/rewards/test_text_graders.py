"""deepscaler, dapo, f1 and gpqa graders: the cases Miles users rely on."""

from __future__ import annotations

from typing import Any

import pytest

from miles_sdk.rewards.dapo import dapo_extract, dapo_reward, minerva_normalize
from miles_sdk.rewards.deepscaler import deepscaler_reward
from miles_sdk.rewards.f1 import f1_score, squad_normalize
from miles_sdk.rewards.gpqa import extract_choice_letter, gpqa_reward


@pytest.mark.parametrize(
    ("response", "label", "expected"),
    [
        (r"Let me analyze...</think>The answer is \boxed{42}", "42", 1.0),
        (r"Thinking...</think>The answer is \boxed{wrong}", "42", 0.0),
        (r"###Response\boxed{42}", "42", 1.0),
        (r"###Response\boxed{wrong}", "42", 0.0),
        (r"The answer is \boxed{42}", "42", 0.0),  # no marker: unfinished thought
        (r"</think>The answer is 42", "42", 0.0),  # no box
        (r"</think>\boxed{42}", "", 0.0),
        (r"</think>\boxed{42}", r"\boxed{42}", 1.0),
        (r"</think>\boxed{123}", 123, 1.0),
        (r"</think>\boxed{1/2}", "0.5", 1.0),
        (r"</think>\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{1}</think> \boxed{2}", "1", 0.0),  # a box inside the thinking does not count
        (r"First thought</think>Second thought</think>\boxed{42}", "42", 1.0),
    ],
)
def test_deepscaler(response: str, label: Any, expected: float) -> None:
    assert deepscaler_reward(response, label) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", "42"),
        ("  42  ", "42"),
        (r"\text{hello}", "hello"),
        (r"\textbf{bold}", "bold"),
        ("x = 42", "42"),
        ("100 square", "100"),
        ("$50$ dollars", "50"),
        (r"\boxed{42}", "42"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\sqrt3", r"\sqrt{3}"),
        ("1,000", "1000"),
        ("<|im_end|>", ""),
    ],
)
def test_minerva_normalize(raw: str, expected: str) -> None:
    assert minerva_normalize(raw) == expected


@pytest.mark.parametrize(
    ("response", "label", "score", "pred"),
    [
        ("Answer: 42", "42", 1.0, "42"),
        ("Answer: 100", "42", -1.0, "100"),
        ("Answer: wrong", "42", -1.0, "wrong"),
        ("answer : 42", "42", 1.0, "42"),
        ("Answer: 7\nmore text\nAnswer: 42", "42", 1.0, "42"),  # the last Answer: wins
        ("Answer: 42", r"\boxed{42}", 1.0, "42"),  # the label is normalised too
        ("Answer: 42", "42.0", 1.0, "42"),  # integer ground truth
        ("Answer: $1,000$", "1000", 1.0, "1000"),
        ("no answer line", "42", -1.0, "[INVALID]"),
        ("x" * 500 + " Answer: 42", "42", 1.0, "42"),
    ],
)
def test_dapo(response: str, label: str, score: float, pred: str) -> None:
    assert dapo_reward(response, label) == {"score": score, "acc": score > 0, "pred": pred}


def test_dapo_only_reads_the_last_300_characters() -> None:
    early = "Answer: 42\n" + "x" * 300
    assert dapo_extract(early) is None
    assert dapo_reward(early, "42")["score"] == -1.0
    edge = "Answer: 42" + "y" * (300 - len("Answer: 42"))  # exactly 300 chars: still seen
    assert dapo_extract("z" * 50 + edge) is not None


def test_dapo_rejects_a_non_integer_ground_truth() -> None:
    with pytest.raises(ValueError, match="integer ground truth.*'x\\+1'"):
        dapo_reward("Answer: x+1", "x+1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The quick brown fox", "quick brown fox"),
        ("A cat and a dog", "cat and dog"),
        ("Hello, world!", "hello world"),
        ("  multiple   spaces  ", "multiple spaces"),
        ("An apple", "apple"),
    ],
)
def test_squad_normalize(raw: str, expected: str) -> None:
    assert squad_normalize(raw) == expected


@pytest.mark.parametrize(
    ("pred", "truth", "f1", "precision", "recall"),
    [
        ("hello world", "hello world", 1.0, 1.0, 1.0),
        ("hello world foo", "hello world bar", 2 / 3, 2 / 3, 2 / 3),
        ("hello", "hello world", 2 / 3, 1.0, 0.5),
        ("abc", "xyz", 0.0, 0.0, 0.0),
        (None, "anything", 0.0, 0.0, 0.0),
        ("the answer is correct", "answer is correct", 1.0, 1.0, 1.0),
        ("hello, world!", "hello world", 1.0, 1.0, 1.0),
        # yes / no / noanswer need an exact match: overlap is not enough
        ("yes", "no", 0.0, 0.0, 0.0),
        ("no", "yes", 0.0, 0.0, 0.0),
        ("yes", "yes", 1.0, 1.0, 1.0),
        ("Yes.", "yes", 1.0, 1.0, 1.0),
        ("noanswer", "yes", 0.0, 0.0, 0.0),
        ("yes it is", "yes", 0.0, 0.0, 0.0),
        ("no", "no way", 0.0, 0.0, 0.0),
    ],
)
def test_f1(pred: str | None, truth: str, f1: float, precision: float, recall: float) -> None:
    assert f1_score(pred, truth) == pytest.approx((f1, precision, recall))


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is A", "A"),
        ("answer: B", "B"),
        ("I think C is correct", "C"),
        ("final answer: D", "D"),
        ("Option A is the best choice", "A"),
        ("</think>The answer is B", "B"),
        ("Maybe the answer is A.</think>Final answer: (C)", "C"),  # thinking is stripped
        ("After analysis, my choice is C", "C"),
        ("**Answer:** **D**", "D"),
        ("The answer is A. On reflection, the answer is B.", "B"),  # the last stated answer
        ("the answer is a prime number", None),  # a word is not an option letter
        ("A B C D", "D"),
        ("No valid letter here", None),
        ("The answer is Z", None),
        ("", None),
    ],
)
def test_extract_choice_letter(response: str, expected: str | None) -> None:
    assert extract_choice_letter(response, "ABCD") == expected


@pytest.mark.parametrize(
    ("response", "label", "metadata", "expected"),
    [
        ("Answer: A", "A", None, 1.0),
        ("Answer: A", "B", None, 0.0),
        ("Answer: B", "ignored", {"correct_letter": "B"}, 1.0),
        ("Answer: A", "ignored", {"correct_letter": "B"}, 0.0),
        ("Answer: A", 0, {"choices": ["Option 1", "Option 2", "Option 3", "Option 4"]}, 1.0),
        ("Answer: B", 1, {"choices": ["Option 1", "Option 2", "Option 3", "Option 4"]}, 1.0),
        ("Answer: X", "X", {"valid_letters": ["X", "Y", "Z"]}, 1.0),
        ("Answer: A", "X", {"valid_letters": ["X", "Y", "Z"]}, 0.0),
        (
            "I believe the answer is Paris",
            "",
            {"choices": ["Paris", "London", "Berlin", "Rome"], "correct_letter": "A"},
            1.0,
        ),
        ("Answer: A", "", {"choices": {"A": "Paris", "B": "London"}, "correct_letter": "A"}, 1.0),
        ("The answer is Paris", "Paris", {"choices": ["Paris", "London", "Berlin", "Rome"]}, 1.0),
        ("The answer is Berlin", "Paris", {"choices": ["Paris", "London", "Berlin", "Rome"]}, 0.0),
        ("Let me think step by step...</think>The answer is A", "A", None, 1.0),
        (
            "Paris is tempting...</think>The answer is B",
            "",
            {"choices": ["Paris", "London"], "correct_letter": "A"},
            0.0,
        ),
    ],
)
def test_gpqa(response: str, label: Any, metadata: dict[str, Any] | None, expected: float) -> None:
    assert gpqa_reward(response, label, metadata) == expected
