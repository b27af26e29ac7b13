"""The common instruction-following checks (IFEval's instruction ids), written from their spec.

Each check takes the response and that instruction's kwargs and says whether it was followed.
``relation`` kwargs read ``"less than"`` (strictly fewer) or ``"at least"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CHECKS", "Check"]

Check = Callable[[str, Mapping[str, Any]], bool]


def _need(kwargs: Mapping[str, Any], key: str) -> Any:
    if kwargs.get(key) is None:
        raise ValueError(f"missing kwarg {key!r} (got {sorted(kwargs)})")
    return kwargs[key]


def _compare(count: int, kwargs: Mapping[str, Any], key: str, relation_key: str = "relation") -> bool:
    target = int(_need(kwargs, key))
    relation = str(kwargs.get(relation_key) or "at least").strip().lower()
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"{relation_key}={relation!r}: expected 'less than' or 'at least'")


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+(?:['’]\w+)?\b", text)


def _sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by space or the end; abbreviations are rare in answers.
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def _paragraphs_by_stars(text: str) -> list[str]:
    return [p for p in re.split(r"\s?\*\*\*\s?", text)]


# -- keywords -----------------------------------------------------------------------------------


def _keywords_existence(text: str, kw: Mapping[str, Any]) -> bool:
    return all(re.search(re.escape(str(k)), text, re.IGNORECASE) for k in _need(kw, "keywords"))


def _keywords_frequency(text: str, kw: Mapping[str, Any]) -> bool:
    word = re.escape(str(_need(kw, "keyword")))
    count = len(re.findall(rf"\b{word}\b", text, re.IGNORECASE))
    return _compare(count, kw, "frequency")


def _forbidden_words(text: str, kw: Mapping[str, Any]) -> bool:
    return not any(
        re.search(rf"\b{re.escape(str(w))}\b", text, re.IGNORECASE) for w in _need(kw, "forbidden_words")
    )


def _letter_frequency(text: str, kw: Mapping[str, Any]) -> bool:
    letter = str(_need(kw, "letter")).lower()
    return _compare(text.lower().count(letter), kw, "let_frequency", "let_relation")


# -- length -------------------------------------------------------------------------------------


def _number_words(text: str, kw: Mapping[str, Any]) -> bool:
    return _compare(len(_words(text)), kw, "num_words")


def _number_sentences(text: str, kw: Mapping[str, Any]) -> bool:
    return _compare(len(_sentences(text)), kw, "num_sentences")


def _number_paragraphs(text: str, kw: Mapping[str, Any]) -> bool:
    paragraphs = _paragraphs_by_stars(text)
    expected = int(_need(kw, "num_paragraphs"))
    # An empty paragraph (two separators in a row) breaks the format; a trailing one is tolerated.
    inner = paragraphs[1:-1] if len(paragraphs) > 2 else []
    if any(not p.strip() for p in inner):
        return False
    return sum(1 for p in paragraphs if p.strip()) == expected


def _nth_paragraph_first_word(text: str, kw: Mapping[str, Any]) -> bool:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) != int(_need(kw, "num_paragraphs")):
        return False
    nth = int(_need(kw, "nth_paragraph"))
    if not 1 <= nth <= len(paragraphs):
        return False
    words = _words(paragraphs[nth - 1])
    first = str(kw.get("first_word") or "").lower()
    return bool(words) and (not first or words[0].lower() == first)


# -- content and format -------------------------------------------------------------------------


def _placeholders(text: str, kw: Mapping[str, Any]) -> bool:
    return len(re.findall(r"\[[^\[\]]*\]", text)) >= int(_need(kw, "num_placeholders"))


def _postscript(text: str, kw: Mapping[str, Any]) -> bool:
    marker = str(kw.get("postscript_marker") or "P.S.").strip()
    return re.search(rf"\s*{re.escape(marker)}.*$", text, re.IGNORECASE | re.MULTILINE) is not None


def _bullet_lists(text: str, kw: Mapping[str, Any]) -> bool:
    bullets = re.findall(r"^\s*[*\-]\s+\S", text, re.MULTILINE)
    return len(bullets) == int(_need(kw, "num_bullets"))


def _constrained_response(text: str, kw: Mapping[str, Any]) -> bool:
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(option in text.strip() for option in options)


def _highlighted_sections(text: str, kw: Mapping[str, Any]) -> bool:
    found = re.findall(r"\*[^\n*]+\*", text) + re.findall(r"\*\*[^\n*]+\*\*", text)
    count = sum(1 for h in found if h.strip("*").strip())
    return count >= int(_need(kw, "num_highlights"))


def _multiple_sections(text: str, kw: Mapping[str, Any]) -> bool:
    splitter = str(kw.get("section_spliter") or kw.get("section_splitter") or "Section").strip()
    parts = re.split(rf"\s?{re.escape(splitter)}\s?\d+\s?", text)
    return len(parts) - 1 >= int(_need(kw, "num_sections"))


def _json_format(text: str, kw: Mapping[str, Any]) -> bool:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json|Json|JSON)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced is not None:
        body = fenced.group(1)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _title(text: str, kw: Mapping[str, Any]) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", text))


def _two_responses(text: str, kw: Mapping[str, Any]) -> bool:
    parts = text.split("******")
    return len(parts) == 2 and all(p.strip() for p in parts) and parts[0].strip() != parts[1].strip()


def _repeat_prompt(text: str, kw: Mapping[str, Any]) -> bool:
    return text.strip().lower().startswith(str(_need(kw, "prompt_to_repeat")).strip().lower())


def _end_checker(text: str, kw: Mapping[str, Any]) -> bool:
    return text.strip().strip('"').lower().endswith(str(_need(kw, "end_phrase")).strip().lower())


def _start_checker(text: str, kw: Mapping[str, Any]) -> bool:
    return text.strip().strip('"').lower().startswith(str(_need(kw, "start_phrase")).strip().lower())


def _quotation(text: str, kw: Mapping[str, Any]) -> bool:
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


# -- case and punctuation -----------------------------------------------------------------------


def _capital_word_frequency(text: str, kw: Mapping[str, Any]) -> bool:
    capitals = [w for w in _words(text) if w.isupper()]
    return _compare(len(capitals), kw, "capital_frequency", "capital_relation")


def _english_capital(text: str, kw: Mapping[str, Any]) -> bool:
    return text.isupper()


def _english_lowercase(text: str, kw: Mapping[str, Any]) -> bool:
    return text.islower()


def _no_comma(text: str, kw: Mapping[str, Any]) -> bool:
    return "," not in text


CHECKS: dict[str, Check] = {
    "keywords:existence": _keywords_existence,
    "keywords:frequency": _keywords_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "length_constraints:number_words": _number_words,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_checker,
    "startend:start_checker": _start_checker,
    "startend:quotation": _quotation,
    "change_case:capital_word_frequency": _capital_word_frequency,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
}
"""Instruction id -> check. Ids follow IFEval's registry (IFBench uses the same naming)."""
