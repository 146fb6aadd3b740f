"""The quickstart notebook runs top to bottom (small configuration)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("SL_DETR_QUICKSTART_STEPS", "3")
    monkeypatch.setenv("SL_DETR_QUICKSTART_IMAGES", "8")
    monkeypatch.setenv("SL_DETR_QUICKSTART_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert (tmp_path / "work" / "quickstart_predictions.png").is_file()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "classes: ['red-block'" in outputs
    assert "eval_mAP" in outputs
