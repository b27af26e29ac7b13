"""Bad data files name the file and the line, byte offset or column (issue 16.11, issue 14.8)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miles_sdk.data import DatasetError, PromptDataset


def test_malformed_json_reports_the_real_column(tmp_path: Path) -> None:
    line = '{"input": "1+1=", "label": "2"'  # truncated: the error is one past its last character
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=rf"d.jsonl:2: malformed JSON line: .* \(column {len(line) + 1}\)"):
        PromptDataset(str(path))


def test_malformed_json_in_the_middle_of_a_line_keeps_its_column(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", oops}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:1: .*\(column 16\)"):
        PromptDataset(str(path))


def test_latin1_file_names_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    first = b'{"input": "plain"}\n'
    path.write_bytes(first + '{"input": "caf\u00e9"}\n'.encode("latin-1"))
    offset = len(first) + len(b'{"input": "caf')
    with pytest.raises(DatasetError, match=rf"latin.jsonl:2: not UTF-8 at byte offset {offset} .*re-encode"):
        PromptDataset(str(path))


def test_utf16_file_is_named_as_utf16(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    path.write_bytes(json.dumps({"input": "x"}).encode("utf-16"))  # with its byte-order mark
    with pytest.raises(DatasetError, match=r"wide.jsonl: the file is UTF-16 .*must be UTF-8"):
        PromptDataset(str(path))


def test_binary_file_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "blob.jsonl"
    path.write_bytes(b'{"input": "x"}\n' + bytes(range(256)))  # byte 10 of it ends line 2
    with pytest.raises(DatasetError, match=r"blob.jsonl:3: (binary data|not UTF-8) at byte offset 143 "):
        PromptDataset(str(path))


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"input": "x"}\n')
    assert PromptDataset(str(path))[0].prompt == "x"


@pytest.mark.parametrize("damage", ["truncated", "empty", "not parquet"])
def test_bad_parquet_names_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"input": f"q{i}"} for i in range(100)]), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not parquet": b"hello"}[damage])
    with pytest.raises(
        DatasetError, match=r"d.parquet: cannot read parquet .*truncated, empty or not parquet"
    ):
        PromptDataset(str(path))
