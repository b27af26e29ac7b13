"""``rm_type=gpqa``: multiple-choice grading by option letter.

The correct letter comes from, in order: ``metadata["correct_letter"]``; a one-letter label; an
integer label (index into the letters); a label equal to one of ``metadata["choices"]``. The
predicted letter comes from the text after the thinking: the last "answer/option/choice is X"
style phrase, else the last standalone capital letter among the valid ones. Without a letter on
either side, the normalised text of the correct choice found in the response also counts.
Returns 1.0 or 0.0.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from miles_sdk.rewards._extract import strip_think

__all__ = ["extract_choice_letter", "gpqa_reward"]

DEFAULT_LETTERS: tuple[str, ...] = tuple(string.ascii_uppercase[:8])

# Keywords match in any case; the letter itself must be a capital standing alone ("(C)", "C.",
# "**C**"), so "the answer is a prime" does not read as option A.
_ANSWER_PATTERNS = (
    re.compile(r"(?i:final\s+answer|answer|option|choice)\s*(?i:is)?\s*[:\-]?\s*[*(\[]*([A-Z])(?![A-Za-z])"),
    re.compile(r"[(\[*]*([A-Z])[)\]*]*\s+(?i:is\s+(?:the\s+)?correct)"),
)
_STANDALONE = re.compile(r"\b([A-Z])\b")


def _normalize_text(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def extract_choice_letter(response: str, valid_letters: Iterable[str] = DEFAULT_LETTERS) -> str | None:
    """The option letter a response picks, or None; only letters in ``valid_letters`` count."""
    valid = {letter.upper() for letter in valid_letters}
    text = strip_think(response or "")
    found: list[tuple[int, str]] = []
    for pattern in _ANSWER_PATTERNS:
        found += [(m.start(), m.group(1)) for m in pattern.finditer(text) if m.group(1) in valid]
    if found:
        return max(found)[1]  # the last stated answer wins over earlier musings
    for letter in reversed(_STANDALONE.findall(text)):
        if letter in valid:
            return str(letter)
    return None


def _choices(metadata: Mapping[str, Any]) -> list[str] | None:
    raw = metadata.get("choices")
    if raw is None:
        return None
    values = raw.values() if isinstance(raw, Mapping) else raw
    return [str(v) for v in values]


def _correct_letter(
    label: Any, metadata: Mapping[str, Any], letters: list[str], choices: list[str] | None
) -> str | None:
    given = metadata.get("correct_letter")
    if isinstance(given, str) and given.strip():
        return given.strip().upper()
    if isinstance(label, str) and len(label.strip()) == 1 and label.strip().upper() in letters:
        return label.strip().upper()
    if isinstance(label, int | float) and not isinstance(label, bool) and 0 <= int(label) < len(letters):
        return letters[int(label)]
    if isinstance(label, str) and label.strip() and choices:
        target = _normalize_text(label)
        for idx, choice in enumerate(choices):
            if _normalize_text(choice) == target and idx < len(letters):
                return letters[idx]
    return None


def gpqa_reward(response: str, label: Any, metadata: Mapping[str, Any] | None = None) -> float:
    """1.0 when the response picks the correct option, else 0.0 (see the module doc)."""
    metadata = metadata or {}
    choices = _choices(metadata)
    if metadata.get("valid_letters"):
        letters = [str(x).upper() for x in metadata["valid_letters"]]
    elif choices:
        letters = list(string.ascii_uppercase[: len(choices)])
    else:
        letters = list(DEFAULT_LETTERS)
    correct = _correct_letter(label, metadata, letters, choices)
    picked = extract_choice_letter(response, letters)
    if picked is not None and correct is not None:
        return 1.0 if picked == correct else 0.0

    targets: list[str] = []
    if correct is not None and choices and correct in letters and letters.index(correct) < len(choices):
        targets.append(choices[letters.index(correct)])
    targets += [str(metadata[k]) for k in ("correct_answer", "answer_text") if metadata.get(k)]
    if isinstance(label, str) and label.strip():
        targets.append(label)
    said = _normalize_text(strip_think(response or ""))
    if any(t and f" {t} " in f" {said} " for t in map(_normalize_text, targets)):
        return 1.0
    return 0.0
