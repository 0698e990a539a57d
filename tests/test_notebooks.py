"""The demo notebooks run top to bottom (small settings) with nbclient."""

import contextlib
import os
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parents[1] / "demos"
NOTEBOOKS = sorted(DEMOS.glob("*.ipynb"))
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEEDS_DATA: set[str] = set()  # every notebook runs from the installed package alone


@contextlib.contextmanager
def small_offline_env():
    """The notebooks' small, offline settings in the environment for the block (restored afterwards)."""
    env = {"TL_LEADTERM_NB_SMALL": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_notebooks_present():
    assert {p.name for p in NOTEBOOKS} >= {"toy_model.ipynb", "pythia_analysis.ipynb", "training_monitor.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if path.name in NEEDS_DATA and not DATA.is_dir():
        pytest.skip("../shared/data is not present")
    nb = nbformat.read(str(path), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    with small_offline_env():
        # kernel "python3" resolves to the running interpreter (ipykernel's native kernel spec)
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(DEMOS)}})
        client.execute()  # each cell has nbclient's timeout
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.slow
def test_pythia_notebook_runs_outside_a_checkout(tmp_path):
    """Run from a folder with no ../shared beside it: the offline fallback trains a trajectory and needs no file."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(DEMOS / "pythia_analysis.ipynb"), as_version=4)
    with small_offline_env():
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "data folder: None" in text and "local GPT-NeoX trajectory" in text and "[update / circuit_ov]" in text
