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
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors


def test_every_area_has_a_notebook():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    for area in ("kernels_surrogates", "alpha_trimming", "lwr_spectra"):
        assert f"{area}.ipynb" in names, f"missing notebooks/{area}.ipynb"


def _builder():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "notebooks", "build.py")
    spec = importlib.util.spec_from_file_location("notebook_build", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_notebook_has_one_source():
    build = _builder()
    stems = {p.stem for p in build.sources()}
    assert stems == {os.path.basename(p)[: -len(".ipynb")] for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_matches_its_source(path):
    """The committed .ipynb is what `python notebooks/build.py` makes of notebooks/<name>.py (cells, not outputs)."""
    nbformat = pytest.importorskip("nbformat")
    build = _builder()
    src = os.path.splitext(path)[0] + ".py"
    rebuilt = build.cell_sources(build.build(__import__("pathlib").Path(src)))
    committed = build.cell_sources(nbformat.read(path, as_version=4))
    assert rebuilt == committed, f"{path} differs from {src}: run `python notebooks/build.py` and re-execute it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_committed_with_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path} is committed without running it"


def test_percent_format_parser():
    build = _builder()
    cells = build.parse("# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\ny = 2\n")
    assert cells == [("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "y = 2")]
    with pytest.raises(ValueError, match="markdown cell line"):
        build.parse("# %% [markdown]\nnot a comment\n")
