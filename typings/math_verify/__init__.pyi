# Narrow stubs for the parts of math-verify that miles_sdk.rewards calls.
from collections.abc import Sequence
from typing import Any, Literal

class LatexExtractionConfig:
    def __init__(self, try_extract_without_anchor: bool = ..., boxed_match_priority: int = ...) -> None: ...

class ExprExtractionConfig:
    def __init__(self, try_extract_without_anchor: bool = ...) -> None: ...

class StringExtractionConfig:
    def __init__(
        self, strings: tuple[str, ...] = ..., try_extract_without_anchor: bool = ..., lowercase: bool = ...
    ) -> None: ...

ExtractionTarget = LatexExtractionConfig | ExprExtractionConfig | StringExtractionConfig

def parse(
    pred: str,
    extraction_config: Sequence[ExtractionTarget] = ...,
    fallback_mode: Literal["no_fallback", "first_match"] = ...,
    extraction_mode: Literal["first_match", "any_match"] = ...,
    parsing_timeout: int | None = ...,
    raise_on_error: bool = ...,
) -> list[Any]: ...
def verify(
    gold: list[Any] | Any,
    target: list[Any] | Any,
    float_rounding: int = ...,
    numeric_precision: int = ...,
    strict: bool = ...,
    allow_set_relation_comp: bool = ...,
    timeout_seconds: int | None = ...,
    raise_on_error: bool = ...,
) -> bool: ...
