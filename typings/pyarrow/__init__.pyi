# Narrow stub: pyarrow ships no type information; only what miles_sdk.data touches.
from typing import Any

class RecordBatch:
    def to_pylist(self) -> list[dict[str, Any]]: ...

class Table:
    @staticmethod
    def from_pylist(mapping: list[dict[str, Any]]) -> Table: ...
