"""Regression cases from a differential run of the built-in graders against Miles's rm_hub.

Each case was a disagreement with Miles's grader. Where ours was wrong, it was fixed and pinned here;
where the difference is deliberate (docs/rewards.md, "Differences from Miles"), the case pins our
side. Expected values are written by hand.
"""

from __future__ import annotations

import pytest

from miles_sdk.rewards.gpqa import gpqa_reward
from miles_sdk.rewards.math import grade_math_answer, normalize_math_answer
from miles_sdk.rewards.registry import score_builtin_sync

# --- fixed: answers Miles's normaliser accepted and ours rejected --------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"\mathbf{10}", "10"),  # font commands only change the look
        (r"\textbf{Monday}", "monday"),
        (r"\text{\textbf{Monday}}", "monday"),
        (r"\boldsymbol{x}+1", "x+1"),
        ("{10}", "10"),  # one brace pair around everything goes
        ("{{10}}", "10"),
        ("{1}{2}", "{1}{2}"),  # but not two separate groups
        ("1{,}000", "1000"),  # LaTeX's thousands separator
        ("1 and 2", "1,2"),  # a spoken list is a comma list
        ("2 or 3", "2,3"),
        (r"\{1,2\}", "1,2"),  # a set lists its elements
    ],
)
def test_normaliser_fixes(raw: str, expected: str) -> None:
    assert normalize_math_answer(raw) == expected


@pytest.mark.parametrize(
    ("given", "truth"),
    [
        (r"\mathbf{10}", "10 cm"),
        ("10.0", r"\boxed{{10}}"),
        ("1{,}000", "1000"),
        (r"\text{\textbf{Monday}}", "monday"),
        ("1 and 2", "1, 2"),
        (r"\{1,2\}", "1 and 2"),
    ],
)
def test_fixed_cases_now_grade_correct(given: str, truth: str) -> None:
    assert grade_math_answer(given, truth)


def test_list_forms_do_not_match_a_tuple() -> None:
    # "1 and 2" is a list, (1,2) a point: the brackets still have to agree.
    assert not grade_math_answer("1 and 2", "(1,2)")


# --- deliberate differences (ours is the intended behaviour) -------------------------------------


def test_fbox_is_graded() -> None:
    # Miles finds the \fbox but then fails to unwrap it (it expects "\boxed{") and scores 0.
    assert score_builtin_sync("math", r"Thus \fbox{30}", "30", {}, []) == 1.0


def test_integer_zero_label_is_a_label() -> None:
    # Miles treats the falsy label 0 as "no label" and scores 0.
    assert score_builtin_sync("math", r"\boxed{0}", 0, {}, []) == 1.0


@pytest.mark.parametrize(
    ("given", "truth"), [("1e1", "10"), ("0.5", r"\frac{2}{4}"), (r"\sqrt{100}", "20/2")]
)
def test_strict_integer_and_unreduced_fraction_rules(given: str, truth: str) -> None:
    # An integer truth needs an integer (1e1 could be 1*e^1); an unreduced fraction truth needs
    # that fraction. Miles's sympy path accepts all three.
    assert not grade_math_answer(given, truth)


@pytest.mark.parametrize(
    ("given", "truth"),
    [("30°", "30^\\circ"), ("5 dollars", "\\$5"), ("x = 10", "10 cm"), ("2^{1/2}", "\\sqrt{2}")],
)
def test_more_lenient_than_miles(given: str, truth: str) -> None:
    # Degree signs, "dollars" and "x =" are stripped; math-verify proves 2^{1/2} = sqrt(2), where
    # Miles refuses to evaluate anything containing "^{".
    assert grade_math_answer(given, truth)


def test_boxed_dapo_works() -> None:
    # The quirk the semantics file says to fix: Miles's boxed_dapo always scores -1.
    out = score_builtin_sync("boxed_dapo", r"so \boxed{42 dollars}", "42", {}, [])
    assert out == {"score": 1.0, "acc": True, "pred": "42"}


@pytest.mark.parametrize(
    ("response", "label", "metadata"),
    [
        ("Berlin is the capital", "A", {}),  # "a" is a substring of "capital"
        ("Paris", "A", {"choices": ["London", "Paris", "Berlin"]}),  # "a" in "paris"
        ("None of them", "E", {"choices": ["London", "Paris"]}),  # "e" in "none"
    ],
)
def test_gpqa_text_fallback_needs_whole_words(response: str, label: str, metadata: dict[str, object]) -> None:
    # Miles's fallback is a substring test, so a one-letter label matches almost any response.
    assert gpqa_reward(response, label, metadata) == 0.0


def test_gpqa_text_fallback_still_matches_the_answer_text() -> None:
    assert gpqa_reward("The capital is Paris.", "Paris", {"choices": ["London", "Paris"]}) == 1.0


@pytest.mark.parametrize("response", [r"\boxed{B}", "B"])
def test_gpqa_metadata_correct_letter_wins_over_an_integer_label(response: str) -> None:
    # Miles lets an integer label overwrite metadata["correct_letter"] (a string label does not).
    assert gpqa_reward(response, 0, {"correct_letter": "B"}) == 1.0


def test_gpqa_last_answer_phrase_wins() -> None:
    # Miles takes the first phrase ("Option A") and scores 0.
    assert gpqa_reward("Option A looks wrong; the answer is B", 1, {"choices": ["x", "y", "z"]}) == 1.0
