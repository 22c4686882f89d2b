"""The tutorial notebook runs top to bottom (fast mode: toy sizes, a few training steps)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tutorial.ipynb"


def test_tutorial_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernel spec for *this* interpreter, so the notebook imports the dlp under test whatever kernels are installed.
    spec_dir = tmp_path / "jupyter" / "kernels" / "dlp-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dlp test", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("DLP_TUTORIAL_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # toy sizes: threads only add overhead (and oversubscribe CI runners)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("DLP_TUTORIAL_CHECKPOINT", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="dlp-test", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8, f"expected the tutorial's figures, got {len(images)}"
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "fast mode" in text and "run directory" in text
