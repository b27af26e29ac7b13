"""``rm_type=math``: grade the last ``\\boxed{}`` answer against the label.

Two answers are equal when their Hendrycks-normalised strings match, or when math-verify proves
the expressions equal. Guards keep the strictness Miles's grader has:

- a tuple or interval is compared element by element, brackets included;
- a fraction against a fraction, or an unreduced fraction ground truth, needs the same
  numerator and denominator (``2/4`` is not accepted for ``1/2``: the task asked to reduce);
- an integer ground truth needs an integer answer of the same value (``20/2`` is not ``10``);
- text with more than two distinct letters is compared as text only, because math-verify would
  parse ``hello`` as the product ``h*e*l*l*o`` and accept any anagram.

math-verify guards its sympy calls with ``signal.alarm``, which only works on a main thread.
:func:`set_signal_timeouts` turns that on in reward worker processes (whose tasks run on their
main thread); elsewhere it stays off and ``reward_timeout`` bounds the wait instead.
"""

from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction
from math import gcd
from typing import Any

from miles_sdk._untyped_deps import import_math_verify
from miles_sdk.rewards._extract import last_boxed_content

__all__ = [
    "grade_math_answer",
    "math_reward",
    "normalize_math_answer",
    "quick_math_verdict",
    "set_signal_timeouts",
    "split_tuple",
]

_MATH_VERIFY_SECONDS = 5
_signal_timeouts = False


def set_signal_timeouts(enabled: bool) -> None:
    """Let math-verify use its own ``signal.alarm`` timeouts (only valid on a main thread)."""
    global _signal_timeouts
    _signal_timeouts = enabled


class _DropTimeoutWarning(logging.Filter):
    # math-verify warns once that its timeout is off; here that is deliberate (see module doc).
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())

_UNIT_WORDS = (
    "degree|cm|centimeter|meter|metre|km|kilometer|mile|second|minute|hour|day|week|month|year"
    "|foot|feet|inch|inches|yard|gram|kg|kilogram|pound|dollar|cent|unit|mph|square"
)
_TRAILING_UNIT = re.compile(rf"(?<=[\d}}])\s*(?:{_UNIT_WORDS})(?:e?s)?(?:\s*\^\s*\{{?\d\}}?)?\s*$")
_TRAILING_TEXT_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{\s[^{}]*\}(?:\^\{?\d\}?)?\s*$")
_THOUSANDS = re.compile(r"(\d),(\d{3})(?!\d)")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac(\{[^{}]*\})(\d)")
_FRAC_FIRST_SHORT = re.compile(r"\\frac(\d)(\{)")
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")
_INT = re.compile(r"-?\d+(?:\.0*)?")
_FRACTION = re.compile(r"(-?)(?:\\frac\{(-?\d+)\}\{(\d+)\}|(-?\d+)/(\d+))")
_TUPLE_BRACKETS = "()[]"
_DECIMAL = re.compile(r"(?<![\d.])\d*\.\d+(?![\d.])")
# Font and box commands that only change how the answer looks: \mathbf{10} is 10.
_FORMATTING = re.compile(r"\\(?:textbf|textrm|textit|mathbf|mathrm|mathit|boldsymbol|bm|mbox)\{")


def _strip_outer_braces(s: str) -> str:
    """``{10}`` -> ``10``, but ``{1}{2}`` stays: only a brace pair that encloses everything goes."""
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        depth = 0
        for i, ch in enumerate(s):
            depth += (ch == "{") - (ch == "}")
            if depth == 0 and i < len(s) - 1:
                return s
        s = s[1:-1]
    return s


def normalize_math_answer(answer: str) -> str:
    """Hendrycks-style normal form: no units, ``$``, ``%``, ``\\text{}``, spaces or thousands
    commas; ``\\dfrac``/``\\tfrac`` become ``\\frac``; ``a/b`` of integers becomes ``\\frac{a}{b}``."""
    s = _FORMATTING.sub(r"\\text{", answer.strip())
    whole_text = re.fullmatch(r"\\text\{(.+?)\}", s)
    if whole_text is not None:
        s = whole_text.group(1).strip()
    for junk in ("\n", "\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "\\displaystyle"):
        s = s.replace(junk, "")
    s = s.replace("\\\\", "\\").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for degree in ("^{\\circ}", "^\\circ", "°"):
        s = s.replace(degree, "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _TRAILING_TEXT_UNIT.sub("", s)
    s = _TRAILING_UNIT.sub("", s.strip())
    # "x = 5" -> "5" (a short left-hand side names the unknown, it is not part of the answer).
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0].strip()) <= 2:
        s = sides[1]
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    # "1 and 2" / "1 or 2" list the same values as "1, 2" (Miles's grader reads them so too).
    s = re.sub(r"\s+(?:and|or)\s+", ",", s)
    s = s.replace(" ", "").replace("{,}", ",")  # 1{,}000: LaTeX's thousands separator
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]  # a set {1,2} lists its elements
    s = _strip_outer_braces(s)
    while True:
        merged = _THOUSANDS.sub(r"\1\2", s)
        if merged == s:
            break
        s = merged
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(r"\\frac\1{\2}", s)
    s = _FRAC_FIRST_SHORT.sub(r"\\frac{\1}\2", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    slash = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if slash is not None:
        s = f"\\frac{{{slash.group(1)}}}{{{slash.group(2)}}}"
    if s.endswith(".") and not s.endswith("\\."):
        s = s[:-1]
    if "\\" not in s:
        s = s.lower()
    return s


def split_tuple(expr: str) -> list[str]:
    """Elements of a tuple or interval ``(a,b)`` / ``[a,b)``; ``[expr]`` otherwise."""
    if (
        len(expr) > 2
        and expr[0] in _TUPLE_BRACKETS
        and expr[-1] in _TUPLE_BRACKETS
        and not any(ch in expr[1:-1] for ch in _TUPLE_BRACKETS)
        and "," in expr
    ):
        return [part.strip() for part in expr[1:-1].split(",")]
    return [expr]


def _as_fraction(s: str) -> tuple[int, int] | None:
    m = _FRACTION.fullmatch(s)
    if m is None:
        return None
    num = int(m.group(2) if m.group(2) is not None else m.group(4))
    den = int(m.group(3) if m.group(3) is not None else m.group(5))
    if den == 0:
        return None
    return (-num if m.group(1) else num), den


def _as_int(s: str) -> int | None:
    if _INT.fullmatch(s) is None:
        return None
    return int(s.split(".")[0])


def _too_many_letters(s: str) -> bool:
    letters = set(re.sub(r"\\[a-zA-Z]+", "", s)) - set("e")  # Euler's e is a constant
    return len({ch for ch in letters if ch.isalpha()}) > 2


def _exact_decimals(expr: str) -> str:
    """Every decimal literal as the exact fraction it writes (``0.25`` -> ``{\\frac{1}{4}}``).

    math-verify compares a float with anything by rounding both to ``float_rounding`` places, so
    ``0.3333333333`` "equals" ``1/3`` and ``3.14159265`` "equals" ``\\pi``. Miles subtracts and
    simplifies (``sympy.simplify(truth - given) == 0``), which is exact. With no floats left,
    math-verify's comparison is symbolic, hence exact, and ``0.5`` still equals ``\\frac12``.
    """

    def as_fraction(m: re.Match[str]) -> str:
        value = Fraction(m.group(0))
        return "{\\frac{%d}{%d}}" % (value.numerator, value.denominator)

    return _DECIMAL.sub(as_fraction, expr)


def _math_verify_equal(truth: str, given: str, float_rounding: int | None = None) -> bool:
    # Imported lazily: math-verify pulls in sympy and antlr, a second of import time.
    math_verify = import_math_verify()

    if float_rounding is None:
        truth, given = _exact_decimals(truth), _exact_decimals(given)
    seconds = _MATH_VERIFY_SECONDS if _signal_timeouts else None
    gold = math_verify.parse(f"${truth}$", parsing_timeout=seconds)
    pred = math_verify.parse(f"${given}$", parsing_timeout=seconds)
    if not gold or not pred:
        return False
    if float_rounding is None:
        return bool(math_verify.verify(gold, pred, timeout_seconds=seconds))
    return bool(math_verify.verify(gold, pred, float_rounding=float_rounding, timeout_seconds=seconds))


def _element_verdict(truth: str, given: str) -> bool | None:
    """Equal / not equal by the string rules alone; None when it takes math-verify."""
    if truth == given:
        return True
    truth_frac, given_frac = _as_fraction(truth), _as_fraction(given)
    if truth_frac is not None and given_frac is not None:
        return truth_frac == given_frac
    if truth_frac is not None and gcd(*truth_frac) > 1:
        return False  # an unreduced ground truth asks for that exact form
    truth_int, given_int = _as_int(truth), _as_int(given)
    if truth_int is not None or given_int is not None:
        return truth_int == given_int
    if _too_many_letters(truth) or _too_many_letters(given):
        return False
    return None


def _verified(truth: str, given: str, float_rounding: int | None) -> bool:
    try:
        return _math_verify_equal(truth, given, float_rounding)
    except TimeoutError:
        return False


def _prepare(given: str | None, truth: Any) -> tuple[bool | None, list[tuple[str, str]]]:
    """A final verdict, or the element pairs whose verdict needs math-verify."""
    if given is None or truth is None or truth == "":
        return False, []
    truth_text = str(truth)
    if "\\boxed" in truth_text or "\\fbox" in truth_text:
        boxed = last_boxed_content(truth_text)
        if boxed is None:
            return False, []
        truth_text = boxed
    t, g = normalize_math_answer(truth_text), normalize_math_answer(given)
    if not t or not g:
        return False, []
    if t == g:
        return True, []
    t_elems, g_elems = split_tuple(t), split_tuple(g)
    if len(t_elems) != len(g_elems):
        return False, []
    if len(t_elems) > 1 and (t[0], t[-1]) != (g[0], g[-1]):
        return False, []  # (1,2) is not [1,2]
    open_pairs: list[tuple[str, str]] = []
    for te, ge in zip(t_elems, g_elems, strict=True):
        verdict = _element_verdict(te, ge)
        if verdict is False:
            return False, []
        if verdict is None:
            open_pairs.append((te, ge))
    return (None if open_pairs else True), open_pairs


def quick_math_verdict(given: str | None, truth: Any) -> bool | None:
    """:func:`grade_math_answer` without math-verify: True/False when the string rules decide,
    None when an element needs the symbolic check. Cheap (microseconds), safe on the event loop."""
    return _prepare(given, truth)[0]


@functools.lru_cache(maxsize=65536)
def _grade_cached(given: str, truth: str, float_rounding: int | None) -> bool:
    # A group of n samples often repeats one final answer; sympy work is worth remembering.
    verdict, open_pairs = _prepare(given, truth)
    if verdict is not None:
        return verdict
    return all(_verified(te, ge, float_rounding) for te, ge in open_pairs)


def grade_math_answer(given: str | None, truth: Any, float_rounding: int | None = None) -> bool:
    """True when the extracted answer ``given`` equals the ground truth ``truth``.

    ``truth`` may itself hold a ``\\boxed{}`` (its content is used) or be a number. A missing
    answer or a falsy ground truth is never equal.

    Equality is exact, as in Miles: ``0.3333333333`` is not ``1/3``, ``3.14159265`` is not
    ``\\pi`` (``0.5`` is ``\\frac12``). ``float_rounding=N`` turns on math-verify's numeric
    tolerance instead: a decimal equals a value when both round to N places
    (``Config.math_float_rounding``).
    """
    if given is None or truth is None or truth == "":
        return False
    return _grade_cached(given, str(truth), float_rounding)


def math_reward(response: str, label: Any, float_rounding: int | None = None) -> float:
    """1.0 when the last ``\\boxed{}``/``\\fbox{}`` of ``response`` equals ``label``, else 0.0."""
    return 1.0 if grade_math_answer(last_boxed_content(response), label, float_rounding) else 0.0
