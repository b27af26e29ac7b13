"""docs/config.md is generated from Config and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_config_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_field_is_documented() -> None:
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    undocumented = [
        line.split("`")[1]
        for line in text.splitlines()
        if line.startswith("| `--") and line.rstrip().endswith("|  |")
    ]
    assert undocumented == []
