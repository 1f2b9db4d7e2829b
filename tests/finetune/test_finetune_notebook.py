"""The notebook runs end to end, headless, with the tiny model and the drawn dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "finetune_and_search.ipynb"


def test_notebook_runs_finetune_evaluate_reindex_search(tmp_path, monkeypatch, tiny_model_dir):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    work = tmp_path / "work"
    for name, value in {"NOTEBOOK_WORKDIR": work, "NOTEBOOK_BASE_MODEL": tiny_model_dir, "NOTEBOOK_EPOCHS": 1,
                        "NOTEBOOK_LR": "1e-3", "NOTEBOOK_BATCH_SIZE": 16}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parent.parent))  # the kernel imports this checkout
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored clean
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    record = json.loads((work / "model" / "eval.json").read_text())
    assert record["before"]["queries"] == 18 and record["after"]["queries"] == 18
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "$ clipsearch finetune" in printed and "$ clipsearch ingest" in printed
    assert "$ clipsearch reindex" in printed and "'images' now means 'images-" in printed
    assert "means images-" in printed and str(work / "model") in printed  # status: the fine-tuned model's version
    last = notebook.cells[-2]
    assert last.cell_type == "code" and "search" in last.source
    assert any(" /" in out.get("text", "") or "png" in out.get("text", "") for out in last.outputs)
    assert any("image/png" in out.get("data", {}) for out in last.outputs)  # the hits, shown
