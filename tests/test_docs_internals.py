"""docs/internals.md's table of the loop's stages names files that exist, and every stage value."""

from __future__ import annotations

import re
from pathlib import Path

import miles_sdk.stages

ROOT = Path(__file__).resolve().parents[1]


def _stage_table() -> str:
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    start = text.index("## The stages of one step")
    return text[start : text.index("\n## ", start + 1)]


def test_every_file_the_stage_table_names_exists() -> None:
    paths = re.findall(r"`([\w/]+\.py)`", _stage_table())
    assert len(paths) > 10
    missing = [p for p in paths if not (ROOT / "miles_sdk" / p).exists() and not (ROOT / p).exists()]
    assert missing == []


def test_the_stage_table_shows_every_stage_value() -> None:
    table = _stage_table()
    for name in miles_sdk.stages.__all__:
        if name != "StageDataError":
            assert f"`{name}`" in table or name in table, name
