"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel (a running event loop)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "notebook.ipynb"


def test_notebook_executes(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["MILES_SDK_NOTEBOOK_ROLLOUTS"] = "3"
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        del os.environ["MILES_SDK_NOTEBOOK_ROLLOUTS"]
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "first reward" in outputs
    assert not any(o.get("output_type") == "error" for cell in nb.cells for o in cell.get("outputs", []))
