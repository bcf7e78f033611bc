"""Every notebook in notebooks/ runs top to bottom (small sizes), executed with nbclient in a fresh kernel."""

import glob
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))

# Sizes the test runs two notebooks at: ``(text in the notebook, text the test runs, times it occurs)``. Only these
# literals change (every cell, call and figure runs, on the same code paths); the committed notebooks keep their own
# sizes and the outputs they show. The others are already small: their time is compiling, not computing.
SMALL = {
    # four optimizers, the init check, the spike and tail figures at a quarter of n, d, h and a fifth of the steps
    # (CPU 63 s -> 29 s; batch_size=32 stays below n)
    "lwr_spectra.ipynb": [
        ("lwr.LWRConfig(n=400, d=200, h=300)", "lwr.LWRConfig(n=100, d=50, h=75)", 1),
        ("steps=150, record_every=50", "steps=30, record_every=10", 1),
        ("steps=300, record_every=100", "steps=60, record_every=20", 3),
    ],
    # 500 test points (250 per half), 3 bootstrap rounds (CPU 23 s -> 17 s)
    "alpha_trimming.ipynb": [
        ("T, n_cand, n_ref = 2000, 12, 12", "T, n_cand, n_ref = 500, 12, 12", 1),
        ("n_boot=10)", "n_boot=3)", 1),
    ],
}


def _shrink(nb, name):
    """Apply :data:`SMALL` to the code cells of notebook ``name``; each text must occur as often as listed."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for old, new, times in SMALL.get(name, []):
        found = sum(c.source.count(old) for c in code)
        assert found == times, f"{name}: {old!r} occurs {found} times, not {times}: update SMALL in {__file__}"
        for c in code:
            c.source = c.source.replace(old, new)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    _shrink(nb, os.path.basename(path))
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
