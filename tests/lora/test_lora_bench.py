"""bench/lora.py runs (tiny shape, CPU): the full and LoRA rows, with the adapter's checkpoint smaller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_bench_lora_runs_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.lora import main

    out = tmp_path / "lora.json"
    rows = main(["--model", "tiny", "--device", "cpu", "--steps", "2", "--rank", "4", "--json", str(out)])
    full, lora = rows
    assert (full["mode"], lora["mode"]) == ("full", "LoRA r4")
    assert lora["trained_params"] < full["trained_params"] == full["total_params"]
    assert lora["checkpoint_model_gib"] < full["checkpoint_model_gib"]
    assert "| LoRA r4 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][1]["mode"] == "LoRA r4"
