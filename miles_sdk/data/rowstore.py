"""Row stores: random access to prompt rows without holding them all as Python objects (issue 16.12).

A :class:`RowStore` knows how many rows a source has and reads row ``i`` on demand, with its
location (``data.jsonl:12``, ``data.parquet[row 3]``) for error messages (issue 16.11).

* JSONL: the file is memory-mapped; opening it checks that it is UTF-8 text (a latin-1, UTF-16
  or binary file is an error naming the line and byte offset), checks every line's JSON syntax in
  pyarrow's C++ parser, and indexes line starts with numpy (8 bytes per row). A row is parsed
  with ``json.loads`` when it is read, so values keep the types the data holds.
* Parquet: the table is read memory-mapped; a row is converted when read. A truncated, empty or
  non-parquet file is an error naming the file.
* Row dicts in memory and HF ``datasets.Dataset`` (itself a memory-mapped Arrow table) are read
  in place.
"""

from __future__ import annotations

import codecs
import importlib
import json
import mmap
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = ["JsonlRows", "ParquetRows", "RawRow", "RowStore", "SequenceRows", "open_rows"]

_CHUNK = 1 << 22


class RawRow(NamedTuple):
    """One dataset row and where it came from (for error messages)."""

    where: str
    data: Mapping[str, Any]


class RowStore(Protocol):
    """Rows by position; ``name`` says where they come from."""

    @property
    def name(self) -> str: ...

    def __len__(self) -> int: ...

    def location(self, i: int) -> str: ...

    def row(self, i: int) -> RawRow: ...


def _error(message: str) -> Exception:
    from miles_sdk.data.dataset import DatasetError  # the public error type lives with the dataset

    return DatasetError(message)


def _check_row(where: str, data: Any) -> RawRow:
    if not isinstance(data, Mapping):
        raise _error(f"{where}: a row must be a JSON object / dict, got {type(data).__name__}")
    return RawRow(where, data)


# ==== JSONL ===================================================================================

_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _line_of(buf: Any, offset: int) -> int:
    """1-based line number of byte ``offset`` in ``buf``."""
    return int(np.count_nonzero(np.frombuffer(buf, dtype=np.uint8, count=offset) == 10)) + 1


def _check_utf8(path: str, buf: Any, start: int) -> None:
    """Raise naming the line and byte offset of the first byte that is not UTF-8 text."""
    for bom, encoding in _BOMS:
        if bytes(buf[: len(bom)]) == bom:
            raise _error(
                f"{path}: the file is {encoding} (byte-order mark at byte 0); JSONL prompt data must be "
                f"UTF-8: re-encode it (e.g. iconv -f {encoding} -t UTF-8)"
            )
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = len(buf)
    for pos in range(start, size, _CHUNK):
        chunk = buf[pos : min(pos + _CHUNK, size)]
        try:
            decoder.decode(chunk, final=pos + _CHUNK >= size)
        except UnicodeDecodeError as exc:
            # The decoder may hold back up to 3 bytes of an unfinished character from the last chunk.
            offset = max(pos + exc.start - len(decoder.getstate()[0]), 0)
            bad = bytes(buf[offset : offset + 4])
            kind = "binary data" if b"\x00" in bytes(buf[max(offset - 64, 0) : offset + 64]) else "not UTF-8"
            raise _error(
                f"{path}:{_line_of(buf, offset)}: {kind} at byte offset {offset} ({bad!r}); JSONL prompt "
                f"data must be UTF-8 text: re-encode the file (e.g. iconv -f latin1 -t UTF-8)"
            ) from None
    if size - start > 0 and b"\x00" in bytes(buf[start : min(size, start + 4096)]):
        offset = bytes(buf[start : min(size, start + 4096)]).index(b"\x00") + start
        raise _error(
            f"{path}:{_line_of(buf, offset)}: binary data (NUL byte at byte offset {offset}); "
            "JSONL prompt data must be UTF-8 text"
        )


def parse_json_line(path: str, line_no: int, raw: bytes) -> Any:
    """One JSONL line as Python values; errors name the file, line and column."""
    text = raw.decode("utf-8").rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # Miles prints and skips bad lines; a silently shorter dataset loses prompts. The column is
        # counted in the line itself (with the newline kept, json counted an error at the end as
        # column 1 of a line 2).
        raise _error(f"{path}:{line_no}: malformed JSON line: {exc.msg} (column {exc.pos + 1})") from exc


def _check_json_syntax(path: str, lines: JsonlRows) -> None:
    """Every line is a JSON object: checked in pyarrow's C++ parser; the exact line and column of a
    failure are then found in Python (the slow path runs only when something is wrong)."""
    # pyarrow ships no types: imported by name, so that a user's mypy needs nothing (see _untyped_deps).
    pa: Any = importlib.import_module("pyarrow")
    pa_json: Any = importlib.import_module("pyarrow.json")
    options = pa_json.ParseOptions(explicit_schema=pa.schema([]), unexpected_field_behavior="ignore")
    try:
        pa_json.read_json(path, parse_options=options)
        return
    except (pa.ArrowInvalid, OSError):
        pass
    finally:
        pa.default_memory_pool().release_unused()  # its parse buffers: ~40 MB per million rows
    for i in range(len(lines)):
        lines.row(i)  # raises with the line and column
    # pyarrow refused something Python accepts (e.g. a blank line of spaces): the rows are fine.


class JsonlRows:
    """Random access to the non-blank lines of a JSONL file (see the module doc)."""

    def __init__(self, path: str, row_slice: slice | None = None, name: str | None = None) -> None:
        self.name = name or path
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - kept open for the mmap, closed with it
        size = os.fstat(self._file.fileno()).st_size
        self._buf: Any = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        start = len(codecs.BOM_UTF8) if bytes(self._buf[:3]) == codecs.BOM_UTF8 else 0
        _check_utf8(path, self._buf, start)
        starts, line_nos = self._index(start)
        if row_slice is not None:
            starts, line_nos = starts[row_slice], line_nos[row_slice]
        self._starts = starts
        self._line_nos = line_nos
        if row_slice is None:
            _check_json_syntax(path, self)  # the whole file, in C++
        else:
            for i in range(len(self)):  # a slice is usually small: check just its lines
                self.row(i)

    def _index(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        size = len(self._buf)
        data = np.frombuffer(self._buf, dtype=np.uint8) if size else np.zeros(0, np.uint8)
        newlines = np.flatnonzero(data == 10)
        line_starts = np.concatenate(([start], newlines + 1)).astype(np.int64)
        line_ends = np.concatenate((newlines, [size])).astype(np.int64)
        line_starts[0] = start
        # Blank (or whitespace-only, rare) lines are skipped, as before: a cheap length test first.
        nonblank = line_ends - line_starts > 0
        # Blank lines are skipped, as before; a line that starts with whitespace is checked in full.
        maybe_blank = np.flatnonzero(nonblank)
        if len(maybe_blank):
            first = data[line_starts[maybe_blank]]
            maybe_blank = maybe_blank[(first == 32) | (first == 9) | (first == 13)]
        for i in maybe_blank:
            nonblank[i] = bool(bytes(self._buf[line_starts[i] : line_ends[i]]).strip())
        line_nos = np.flatnonzero(nonblank).astype(np.int64) + 1
        return line_starts[nonblank], line_nos

    def __len__(self) -> int:
        return len(self._starts)

    def location(self, i: int) -> str:
        return f"{self.path}:{int(self._line_nos[i])}"

    def row(self, i: int) -> RawRow:
        start = int(self._starts[i])
        end = self._buf.find(b"\n", start)
        raw = bytes(self._buf[start : len(self._buf) if end < 0 else end])
        line_no = int(self._line_nos[i])
        return _check_row(f"{self.path}:{line_no}", parse_json_line(self.path, line_no, raw))


# ==== parquet =================================================================================


class ParquetRows:
    """Random access to the rows of a parquet file, read memory-mapped."""

    def __init__(self, path: str, row_slice: slice | None = None, name: str | None = None) -> None:
        pa: Any = importlib.import_module("pyarrow")
        pq: Any = importlib.import_module("pyarrow.parquet")
        self.name = name or path
        self.path = path
        try:
            table: Any = pq.read_table(path, memory_map=True)
        except (pa.ArrowException, OSError) as exc:
            raise _error(
                f"{path}: cannot read parquet ({type(exc).__name__}: {exc}); the file is truncated, "
                "empty or not parquet"
            ) from exc
        self._rows = np.arange(table.num_rows, dtype=np.int64)
        if row_slice is not None:
            self._rows = self._rows[row_slice]
        self._table = table

    def __len__(self) -> int:
        return len(self._rows)

    def location(self, i: int) -> str:
        return f"{self.path}[row {int(self._rows[i])}]"

    def row(self, i: int) -> RawRow:
        j = int(self._rows[i])
        return _check_row(self.location(i), self._table.slice(j, 1).to_pylist()[0])


# ==== in memory ===============================================================================


class SequenceRows:
    """Row dicts in memory, or an HF ``datasets.Dataset`` (rows read in place)."""

    def __init__(self, rows: Any, name: str, where: str) -> None:
        self.name = name
        self._rows = rows
        self._where = where

    def __len__(self) -> int:
        return len(self._rows)

    def location(self, i: int) -> str:
        return f"{self._where}[{i}]"

    def row(self, i: int) -> RawRow:
        return _check_row(self.location(i), self._rows[i])


def open_rows(source: Any, parse_data_path: Any) -> JsonlRows | ParquetRows | SequenceRows:
    """The row store of a path (``.jsonl`` / ``.parquet``, optionally ``path@[a:b]``), a list of
    row dicts or an HF Dataset."""
    if isinstance(source, (str, os.PathLike)):
        spec = os.fspath(source)
        path, row_slice = parse_data_path(spec)
        if not os.path.exists(path):
            raise FileNotFoundError(f"prompt data file {path!r} does not exist (from {spec!r})")
        if path.endswith(".jsonl"):
            return JsonlRows(path, row_slice, name=spec)
        if path.endswith(".parquet"):
            return ParquetRows(path, row_slice, name=spec)
        raise _error(
            f"{path}: unsupported prompt data format; use .jsonl or .parquet (optionally path@[a:b])"
        )
    if hasattr(source, "column_names"):
        return SequenceRows(source, f"datasets.Dataset({', '.join(source.column_names)})", "hf_dataset")
    if isinstance(source, Sequence):
        return SequenceRows(source, "rows", "rows")
    raise TypeError(
        f"prompt data must be a path, a list of dicts or a datasets.Dataset, got {type(source).__name__}"
    )
