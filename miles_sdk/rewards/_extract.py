"""Pulling the graded part out of a response: the last ``\\boxed{}``, the text after the thinking.

Shared by the rm types; pure string functions, safe to call in worker processes.
"""

from __future__ import annotations

__all__ = ["last_boxed_content", "strip_think", "text_after_think_marker"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _find_last_box(text: str) -> int:
    """Index of the last ``\\boxed`` (preferred) or, if none, the last ``\\fbox``; -1 when absent."""
    for command in _BOX_COMMANDS:
        idx = text.rfind(command)
        if idx >= 0:
            return idx
    return -1


def last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced.

    ``\\boxed 5`` (TeX's brace-less form) gives ``"5"``. None when there is no box or its braces
    never close, so a truncated response is not mistaken for an answer.
    """
    idx = _find_last_box(text)
    if idx < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, idx))
    rest = text[idx + len(command) :]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        # The brace-less form only takes one token: "\boxed 42." -> "42".
        token = rest.strip().split()[0] if rest.strip() else ""
        token = token.rstrip(".$,")
        return token or None
    open_at = rest.find("{")
    if open_at < 0 or rest[:open_at].strip():
        return None
    depth = 0
    for i in range(open_at, len(rest)):
        ch = rest[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : i]
    return None


def strip_think(text: str) -> str:
    """The text after the last ``</think>``; the whole text when there is none."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[-1]
    return text


def text_after_think_marker(text: str) -> str | None:
    """deepscaler's rule: the text after the last ``</think>``, else the text between the first
    ``###Response`` and the next one; None when neither marker is present."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[-1]
    if "###Response" in text:
        return text.split("###Response")[1]
    return None
