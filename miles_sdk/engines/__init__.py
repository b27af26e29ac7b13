"""Inference engines: the protocol (``base``), the embedded in-process engine, and adapters.

``EmbeddedEngine`` is imported lazily so that ``miles_sdk.engines.base`` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from miles_sdk.engines.base import EngineOutput, FinishReason, InferenceEngine, SamplingParams

if TYPE_CHECKING:
    from miles_sdk.engines.embedded import EmbeddedEngine

__all__ = ["EmbeddedEngine", "EngineOutput", "FinishReason", "InferenceEngine", "SamplingParams"]


def __getattr__(name: str) -> object:
    if name == "EmbeddedEngine":
        from miles_sdk.engines.embedded import EmbeddedEngine

        return EmbeddedEngine
    raise AttributeError(f"module 'miles_sdk.engines' has no attribute {name!r}")
