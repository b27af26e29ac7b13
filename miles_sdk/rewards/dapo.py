"""``rm_type=dapo``: the DAPO/Minerva rule for integer-answer math.

Only the last 300 characters are searched (a long response cannot smuggle an early "Answer:"),
for the last ``Answer: ...`` line. Both it and the ground truth are normalised the Minerva way
and compared as strings; the ground truth must be an integer (DAPO-Math answers all are).
Returns ``{"score": 1.0 | -1.0, "acc": bool, "pred": str}``; read it with ``reward_key="score"``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["DAPO_TAIL_CHARS", "dapo_extract", "dapo_reward", "dapo_score_answer", "minerva_normalize"]

DAPO_TAIL_CHARS = 300
"""How many trailing characters of the response are searched for the answer."""
INVALID = "[INVALID]"

_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

# Phrases that carry no value in a final answer ("5 dollars" -> "5"). Order matters: "\text{}"
# must go after the longer "\text{}^2" forms.
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
_REMOVED: tuple[str, ...] = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    '"',
    "\\dots",
    "<|im_end|>",
    "<|endoftext|>",
)


def minerva_normalize(answer: str) -> str:
    """Minerva's final-answer normal form (lm-eval-harness hendrycks_math), e.g.
    ``"x = 42"`` -> ``"42"``, ``"$50$ dollars"`` -> ``"50"``, ``"\\frac12"`` -> ``"\\frac{1}{2}"``."""
    s = str(answer).split("=")[-1]
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    for junk in _REMOVED:
        s = s.replace(junk, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", s)  # keep only the first $...$ span
    for command in ("text", "textbf", "overline"):
        s = re.sub(rf"(\\{command}\{{)(.*?)(\}})", r"\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", s)
    s = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", s)
    s = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


def dapo_extract(response: str) -> str | None:
    """The last ``Answer:`` value within the last 300 characters; None when there is none."""
    matches = _ANSWER.findall(response[-DAPO_TAIL_CHARS:])
    return matches[-1] if matches else None


def _integer_truth(label: Any) -> str:
    truth = minerva_normalize(str(label))
    try:
        return str(int(float(truth)))
    except ValueError:
        raise ValueError(f"dapo needs an integer ground truth, got label {label!r}") from None


def dapo_score_answer(answer: str | None, label: Any) -> dict[str, Any]:
    """Score an already extracted answer (None = no answer found) against the integer label."""
    truth = _integer_truth(label)
    pred = minerva_normalize(answer) if answer is not None else INVALID
    correct = pred == truth
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred}


def dapo_reward(response: str, label: Any) -> dict[str, Any]:
    """``{"score": +1/-1, "acc": bool, "pred": str}`` for ``response`` against ``label``."""
    return dapo_score_answer(dapo_extract(response), label)
