"""The tutorial notebooks run top to bottom (small sizes through P4T_TUTORIAL_SIZE)."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each executes a notebook (~10-20 s)

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("P4T_TUTORIAL_SIZE", os.environ.get("P4T_TUTORIAL_SIZE", "12"))
    monkeypatch.setenv("P4T_TUTORIAL_MINUTES", os.environ.get("P4T_TUTORIAL_MINUTES", "0.2"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel runs in tmp_path: make it import this checkout's package, not whichever one is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs must be stripped in git"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
