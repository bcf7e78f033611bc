"""Build the notebooks from their one source: ``notebooks/<name>.py`` in the percent format (jupytext's).

A line ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are comments (``# text``). The
``.ipynb`` files are generated from these sources and committed with their outputs; ``tests/test_notebooks.py``
rebuilds each one and checks that its cells equal the committed notebook's.

Usage::

    python notebooks/build.py                      # rebuild every notebook's cells (outputs are dropped)
    python notebooks/build.py microscope --execute # rebuild and run one notebook in place
    python notebooks/build.py kernels_surrogates --execute --figure plot_attribution docs/surrogate_attribution.png
"""

from __future__ import annotations

import argparse
import base64
import re
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_MARK = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")
KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def sources() -> list[Path]:
    """The notebook sources: every ``notebooks/*.py`` except this builder."""
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))


def parse(text: str) -> list[tuple[str, str]]:
    """``[(kind, source), ...]`` with kind ``"markdown"`` or ``"code"``, from percent-format text."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        m = _MARK.match(line)
        if m:
            cells.append(("markdown" if m.group("md") else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not ln.startswith("#")]
            if bad:
                raise ValueError(f"markdown cell line does not start with '#': {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        out.append((kind, "\n".join(lines)))
    return out


def build(source: Path):
    """The notebook (cells only, no outputs) of one percent-format source."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell(s) if k == "markdown" else new_code_cell(s) for k, s in parse(source.read_text())]
    return new_notebook(cells=cells, metadata=dict(KERNELSPEC))


def cell_sources(nb) -> list[tuple[str, str]]:
    """``[(cell_type, source), ...]`` of a notebook: what must agree between the source and the committed file."""
    return [(c.cell_type, c.source) for c in nb.cells]


def _write_figure(nb, needle: str, path: Path) -> None:
    cell = next((c for c in nb.cells if c.cell_type == "code" and needle in c.source), None)
    if cell is None:
        raise SystemExit(f"--figure: no code cell contains {needle!r}")
    png = next((o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})), None)
    if png is None:
        raise SystemExit(f"--figure: the cell containing {needle!r} produced no PNG")
    path.write_bytes(base64.b64decode(png))
    print("wrote", path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build notebooks/*.ipynb from notebooks/*.py (percent format).")
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    p.add_argument("--execute", action="store_true", help="run the notebook in a fresh kernel and keep its outputs")
    p.add_argument(
        "--figure",
        nargs=2,
        metavar=("CELL_TEXT", "PNG"),
        help="after --execute, write the PNG output of the cell containing CELL_TEXT",
    )
    args = p.parse_args(argv)
    import nbformat

    if args.figure and (not args.execute or len(args.names) != 1):
        raise SystemExit("--figure needs --execute and exactly one notebook name")
    srcs = sources()
    known = {s.stem: s for s in srcs}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise SystemExit(f"unknown notebook(s) {unknown}; sources: {sorted(known)}")
    for src in [known[n] for n in args.names] or srcs:
        nb = build(src)
        out = src.with_suffix(".ipynb")
        if args.execute:
            from nbclient import NotebookClient

            t0 = time.time()
            NotebookClient(
                nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
            ).execute()
            print(f"executed {src.stem} in {time.time() - t0:.1f} s")
            if args.figure:
                _write_figure(nb, args.figure[0], Path(args.figure[1]))
        nbformat.write(nb, out)
        print("wrote", out)


if __name__ == "__main__":
    main()
