# Narrow stub: only what miles_sdk.data touches.
from collections.abc import Iterator
from os import PathLike

from pyarrow import RecordBatch, Table

class ParquetFile:
    def __init__(self, source: str | PathLike[str]) -> None: ...
    def iter_batches(self, batch_size: int = ...) -> Iterator[RecordBatch]: ...

def write_table(table: Table, where: str | PathLike[str]) -> None: ...
