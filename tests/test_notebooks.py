"""Every notebook in notebooks/ runs top to bottom (small sizes), executed with nbclient in a fresh kernel."""
import glob
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("JAXCOMPARE_PROGRESS", "0")
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors


def test_every_area_has_a_notebook():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    for area in ("kernels_surrogates", "alpha_trimming", "lwr_spectra"):
        assert f"{area}.ipynb" in names, f"missing notebooks/{area}.ipynb"
