"""Labels as the data holds them (issue 15.1) and the default `label` column (issue 14.2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miles_sdk.config import Config
from miles_sdk.data import PromptDataset

RAW_LABELS: list[Any] = [2, 0.5, "B", {"answer": "x", "aliases": ["y"]}, ["a", "b"]]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_labels_keep_their_type(tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "answer": lab} for i, lab in enumerate(RAW_LABELS)]
    ds = PromptDataset(_jsonl(tmp_path / "d.jsonl", rows), label_key="answer")
    got = [s.label for s in ds.samples]
    assert got == RAW_LABELS
    assert type(got[0]) is int and type(got[1]) is float  # not "2" / "0.5"


def test_parquet_int_label_stays_int(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"input": "q", "label": 3}]), path)
    ds = PromptDataset(str(path), label_key="label")
    assert ds[0].label == 3 and type(ds[0].label) is int


def test_numpy_label_becomes_plain_python() -> None:
    np = pytest.importorskip("numpy")
    ds = PromptDataset([{"input": "q", "label": np.int64(4)}, {"input": "r", "label": np.array([1, 2])}])
    assert ds[0].label == 4 and type(ds[0].label) is int
    assert ds[1].label == [1, 2]


def test_label_column_used_when_label_key_unset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows: list[dict[str, Any]] = [{"input": "q0", "label": "4"}, {"input": "q1", "label": 7}, {"input": "q2"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    assert Config().label_key is None
    with caplog.at_level(logging.INFO, logger="miles_sdk.data.dataset"):
        ds = PromptDataset.from_config(Config(prompt_data=path))
    assert [s.label for s in ds.samples] == ["4", 7, None]
    said = [r.getMessage() for r in caplog.records if "'label' column" in r.getMessage()]
    assert len(said) == 1 and "label_key is unset" in said[0]


def test_explicit_label_key_wins_over_label_column() -> None:
    ds = PromptDataset([{"input": "q", "label": "wrong", "answer": "right"}], label_key="answer")
    assert ds[0].label == "right"
