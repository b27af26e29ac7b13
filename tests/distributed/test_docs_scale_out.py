"""docs/scale-out.md says what the code and the tests do: its memory table is the script's output and
its tested command is the one tests/distributed/test_cli_parity.py runs."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_table_is_the_scripts_output() -> None:
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "scale_out_memory.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    table = DOC.split("<!-- scale_out_memory table -->\n")[1].split("<!-- end scale_out_memory table -->")[0]
    assert table == printed, "rerun: python scripts/scale_out_memory.py and paste its table into docs/scale-out.md"


def test_the_tested_command_is_the_one_the_test_runs() -> None:
    parity = _module(ROOT / "tests" / "distributed" / "test_cli_parity.py")
    block = DOC.split("## The tested command")[1].split("```bash\n")[1].split("```")[0]
    # The test's paths are relative to its working directory, as in the doc.
    assert shlex.split(block.replace("\\\n", " ")) == ["miles-sdk", "train", *parity._flags(Path(), "scaled"), *parity.SCALE_OUT]
