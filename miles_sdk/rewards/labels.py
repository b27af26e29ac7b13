"""Which label values each built-in rm type can use (issue 15.1).

Labels are kept as the data holds them (``str | int | float | dict | list``), so a grader can meet a
label it cannot read: a dict for ``math``, a list for ``f1``, an out-of-range option index for
``gpqa``. :func:`unusable_label` says why, so ``validate_labels`` stops the run before training
instead of scoring every such sample 0.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

__all__ = ["unusable_label"]

_SCALAR_TYPES = ("math", "deepscaler", "f1")
"""Graded as text: a string or a number is fine, a dict / list / bool is not."""


def _kind(label: Any) -> str:
    return type(label).__name__


def _gpqa_letters(metadata: Mapping[str, Any]) -> list[str]:
    if metadata.get("valid_letters"):
        return [str(x).upper() for x in metadata["valid_letters"]]
    choices = metadata.get("choices")
    if choices:
        return list(string.ascii_uppercase[: len(choices)])
    return list(string.ascii_uppercase[:8])


def unusable_label(base: str, label: Any, metadata: Mapping[str, Any]) -> str | None:
    """Why rm type ``base`` (no ``boxed_`` prefix) cannot grade with ``label``; None when it can.

    A missing label is not judged here (the caller reports that with its own wording).
    """
    if label is None:
        return None
    if base in _SCALAR_TYPES:
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            return f"rm_type {base!r} grades against a text or number label, got a {_kind(label)}: {label!r:.80}"
        return None
    if base == "gpqa":
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            return f"rm_type 'gpqa' needs an option letter, an option index or the answer text, got a {_kind(label)}"
        if isinstance(label, int | float) and not isinstance(label, bool):
            letters = _gpqa_letters(metadata)
            if float(label) != int(label) or not 0 <= int(label) < len(letters):
                return (
                    f"rm_type 'gpqa' reads a number label as an option index in 0..{len(letters) - 1}, got {label!r}"
                )
        return None
    return None
