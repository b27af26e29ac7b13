"""Typed views of the third-party modules that ship no type information: math-verify, pyarrow,
sglang and wandb.

Why not ``.pyi`` stubs in a ``typings/`` folder: those help only the mypy run that is pointed at
them. A user's ``mypy --strict`` sees an installed miles_sdk without them, and with miles_sdk on
its path it reports every such import as untyped. So each module is imported by name at run time
and seen through a Protocol of exactly the calls miles_sdk makes; mypy then needs nothing outside
the package. The import stays lazy (heavy or optional dependencies), and a missing optional one
raises ``ImportError`` where it is asked for, so callers keep their "install the extra" messages.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Protocol, cast

__all__ = ["import_math_verify", "import_pyarrow_parquet", "import_sglang", "import_wandb"]


# ---- math-verify (a core dependency; miles_sdk.rewards.math) ----------------------------------


class MathVerifyModule(Protocol):
    def parse(self, pred: str, *, parsing_timeout: int | None = ...) -> list[object]:
        """Parse ``pred`` into the list of candidate expressions (empty when nothing parses)."""
        ...

    def verify(
        self,
        gold: list[object],
        target: list[object],
        *,
        float_rounding: int = ...,
        timeout_seconds: int | None = ...,
    ) -> bool:
        """True when any target expression equals any gold one."""
        ...


def import_math_verify() -> MathVerifyModule:
    return cast(MathVerifyModule, importlib.import_module("math_verify"))


# ---- pyarrow (a core dependency; parquet prompt data) -----------------------------------------


class RecordBatchLike(Protocol):
    def to_pylist(self) -> list[dict[str, Any]]: ...


class ParquetFileLike(Protocol):
    def iter_batches(self) -> Iterator[RecordBatchLike]: ...


class ParquetModule(Protocol):
    def ParquetFile(self, source: str) -> ParquetFileLike: ...


def import_pyarrow_parquet() -> ParquetModule:
    return cast(ParquetModule, importlib.import_module("pyarrow.parquet"))


# ---- sglang (the `sglang` extra) --------------------------------------------------------------


class SGLangModule(Protocol):
    # The engine is returned as ``object``; miles_sdk.engines.sglang_engine narrows it to its own
    # SGLangEngineLike Protocol (kept there, next to the code that calls it).
    def Engine(self, **kwargs: Any) -> object: ...


def import_sglang() -> SGLangModule:
    return cast(SGLangModule, importlib.import_module("sglang"))


# ---- wandb (the `wandb` extra) ----------------------------------------------------------------


class WandbRun(Protocol):
    def log(self, data: dict[str, Any], step: int | None = ...) -> None: ...

    def finish(self) -> None: ...


class WandbModule(Protocol):
    def init(
        self, *, project: str | None = ..., group: str | None = ..., config: dict[str, Any] | None = ...
    ) -> WandbRun: ...


def import_wandb() -> WandbModule:
    return cast(WandbModule, importlib.import_module("wandb"))
