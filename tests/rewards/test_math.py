"""rm_type=math: extraction, Hendrycks normalisation, math-verify equivalence and Miles's guards."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.rewards._extract import last_boxed_content
from miles_sdk.rewards.math import (
    grade_math_answer,
    math_reward,
    normalize_math_answer,
    quick_math_verdict,
    split_tuple,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{42}", "42"),
        (r"So \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"Multiple \boxed{1} and \boxed{2}", "2"),
        (r"\boxed{nested {braces}}", "nested {braces}"),
        (r"\fbox{fbox content}", "fbox content"),
        (r"\boxed 7.", "7"),
        (r"unclosed \boxed{42", None),
        ("No boxed here", None),
        ("", None),
    ],
)
def test_last_boxed_content(text: str, expected: str | None) -> None:
    assert last_boxed_content(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),
        ("1,234,567", "1234567"),
        (r"\text{hello}", "hello"),
        ("  42  ", "42"),
        (r"100\%", "100"),
        (r"\$50", "50"),
        ("HELLO", "hello"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\frac12", r"\frac{1}{2}"),
        ("3/4", r"\frac{3}{4}"),
        (r"10 \text{ cm}", "10"),
        ("10 meters", "10"),
        (r"90^{\circ}", "90"),
        ("x = 5", "5"),
        (".5", "0.5"),
        (r"\left( 1, 2 \right)", "(1,2)"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_math_answer(raw) == expected


@pytest.mark.parametrize(
    ("given", "truth", "expected"),
    [
        ("42", "42", True),
        ("1/2", r"\frac{1}{2}", True),
        ("0.5", r"\frac12", True),
        (r"\frac{\sqrt2}{2}", r"\sqrt{2}/2", True),
        ("(x+1)^2", "x^2+2x+1", True),
        (r"\frac{\pi}{2}", r"\pi/2", True),
        (r"-\frac{1}{2}", "-1/2", True),
        # units, $, % and commas are stripped
        (r"10 \text{ cm}", "10", True),
        ("10 cm", "10", True),
        (r"\$50", "50", True),
        (r"100\%", "100", True),
        ("1,000", "1000", True),
        (r"5^\circ", "5", True),
        # an unreduced fraction needs the exact fraction
        (r"\frac{1}{2}", r"\frac{2}{4}", False),
        ("0.5", r"\frac{2}{4}", False),
        (r"\frac{2}{4}", r"\frac{2}{4}", True),
        ("2/4", r"\frac{2}{4}", True),
        # a fraction against a fraction: same numerator and denominator
        (r"\frac{2}{4}", r"\frac{1}{2}", False),
        # an integer ground truth needs an integer answer
        ("20/2", "10", False),
        (r"\frac{20}{2}", "10", False),
        ("10.0", "10", True),
        ("2", r"\sqrt{4}", False),
        # tuples compare element-wise, brackets included
        ("(1,2)", "(1, 2)", True),
        (r"(\frac{1}{2}, 3)", "(0.5,3)", True),
        ("(1,2,3)", "(1,2)", False),
        ("[1,2]", "(1,2)", False),
        ("(2,1)", "(1,2)", False),
        # text answers are compared as text (no algebra on words)
        (r"\text{hello}", "hello", True),
        ("olleh", "hello", False),
        ("3.14", r"\pi", False),
        ("wrong", "42", False),
        ("", "42", False),
        (None, "42", False),
    ],
)
def test_grade(given: str | None, truth: str, expected: bool) -> None:
    assert grade_math_answer(given, truth) is expected


@pytest.mark.parametrize(
    ("response", "label", "expected"),
    [
        (r"The answer is \boxed{42}", "42", 1.0),
        (r"\boxed{wrong}", "42", 0.0),
        ("no boxed answer 42", "42", 0.0),
        (r"\boxed{42}", r"\boxed{42}", 1.0),  # a boxed ground truth is unboxed first
        (r"\boxed{42}", "", 0.0),  # a falsy label scores 0
        (r"\boxed{42}", None, 0.0),
        (r"\boxed{123}", 123, 1.0),  # non-string labels are compared as text
        (r"\boxed{3.14}", 3.14, 1.0),
        (r"\fbox{7}", "7", 1.0),
    ],
)
def test_math_reward(response: str, label: object, expected: float) -> None:
    assert math_reward(response, label) == expected


def test_split_tuple() -> None:
    assert split_tuple("(1,2)") == ["1", "2"]
    assert split_tuple("[a,b)") == ["a", "b"]
    assert split_tuple("(1)") == ["(1)"]
    assert split_tuple("42") == ["42"]


@settings(max_examples=40, deadline=None)
@given(st.integers(-(10**6), 10**6))
def test_integer_equals_itself_and_not_its_neighbour(n: int) -> None:
    assert grade_math_answer(str(n), str(n))
    assert grade_math_answer(f"{n:,}", str(n))  # thousands separators are ignored
    assert not grade_math_answer(str(n + 1), str(n))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.integers(2, 50))
def test_reduced_fraction_matches_its_slash_and_latex_forms(a: int, b: int) -> None:
    f = Fraction(a, b)
    if f.denominator == 1:
        return
    latex = rf"\frac{{{f.numerator}}}{{{f.denominator}}}"
    assert grade_math_answer(f"{f.numerator}/{f.denominator}", latex)
    unreduced = rf"\frac{{{2 * f.numerator}}}{{{2 * f.denominator}}}"
    assert not grade_math_answer(latex, unreduced)  # the label asks for the unreduced form
    assert grade_math_answer(unreduced, unreduced)


@pytest.mark.parametrize(
    ("given", "truth", "expected"),
    [
        ("42", "42", True),
        ("1,000", "1000", True),
        ("20/2", "10", False),
        (r"\frac{2}{4}", r"\frac{1}{2}", False),
        ("(1,2,3)", "(1,2)", False),
        ("(3,x+1)", "(1,x+1)", False),  # one element already differs: no sympy needed
        ("0.5", r"\frac12", None),  # needs math-verify
        ("(x+1)^2", "x^2+2x+1", None),
        (None, "1", False),
    ],
)
def test_quick_verdict_settles_string_cases_and_defers_symbolic_ones(
    given: str | None, truth: str, expected: bool | None
) -> None:
    assert quick_math_verdict(given, truth) is expected
    if expected is not None:
        assert grade_math_answer(given, truth) is expected
