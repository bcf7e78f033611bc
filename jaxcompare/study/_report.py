"""A self-contained HTML report (figures embedded as PNG data URIs) and a results.json beside it.

Every piece of text is HTML-escaped (``|<u1, β>|`` stays visible); the only markup a caller can ask for is inline
code between backticks. Tables scroll inside their own wrapper and images shrink to the page, so nothing is cut at
narrow widths.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from .._format import format_value
from .._jsonable import to_jsonable
from .._validation import check_int

__all__ = ["Report", "to_jsonable", "render_text"]


_CODE = re.compile(r"`([^`]+)`")


def render_text(s: str) -> str:
    """Plain text to HTML: everything escaped, then `inline code` between backticks becomes ``<code>``.

    Example:
      >>> from jaxcompare.study import render_text
      >>> render_text("|<u1, β>| > 2/√d, see `results.json`")
      '|&lt;u1, β&gt;| &gt; 2/√d, see <code>results.json</code>'
    """
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(str(s), quote=False))


def _fmt(v: Any) -> str:
    return format_value(v)


def _text(v: Any, name: str, *, optional: bool = False) -> str | None:
    """A piece of the page's text: a string (``None`` only where optional), never a number or ``None`` printed."""
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a str (plain text; `backticks` mark code), got {type(v).__name__}: {v!r:.60}.")
    return v


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:break-word}
h1{border-bottom:3px solid #3b6ea5;padding-bottom:.2em}h2{color:#3b6ea5;margin-top:2em;border-bottom:1px solid #ddd}
.guide,.findings{background:#f4f8fc;border-left:4px solid #3b6ea5;padding:.6em 1em;margin:1em 0}
.findings{background:#f6fbf4;border-left-color:#3a8a3a}
.table-wrap{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right;vertical-align:top}th{background:#eef2f7}td:first-child,th:first-child{text-align:left}
td.text{text-align:left}caption{text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0;max-width:100%}figcaption{font-size:.9em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
.kpi{display:inline-block;background:#eef2f7;border-radius:6px;padding:.4em .9em;margin:.2em;font-size:.95em}
.warn{color:#a33}footer{margin-top:3em;color:#777;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}
"""


class Report:
    """Collects sections (text, tables, figures) and writes ``index.html`` + ``results.json``.

    Text arguments are plain text (escaped); `backticks` mark inline code. Numbers go to :attr:`results`.

    Example:
      >>> from jaxcompare.study import Report
      >>> r = Report("demo")
      >>> r.section("A <b> section", "compare |<u1, β>|")
      >>> r.table([{"kernel": "trNTK", "τ_K": 0.71234}])
      >>> "|&lt;u1, β&gt;|" in r.html() and "<td>0.7123</td>" in r.html()
      True
    """

    def __init__(self, title: str):
        self.title = _text(title, "title")
        self.parts: list[str] = []
        self.results: dict[str, Any] = {}
        self.toc: list[tuple[str, str]] = []
        self.findings: list[str] = []
        self.anchor_prefix = ""  # sections run in worker processes get their own prefix (unique anchors)

    def merge(self, other: Report) -> None:
        """Append another report's sections, table of contents and findings (a section run in a worker)."""
        self.parts.extend(other.parts)
        self.toc.extend(other.toc)
        self.findings.extend(other.findings)

    def section(self, title: str, guide: str | None = None) -> None:
        """A new section: a heading (in the table of contents) and an optional reading guide."""
        title = _text(title, "section title")
        guide = _text(guide, "guide", optional=True)
        anchor = f"{self.anchor_prefix}s{len(self.toc)}"
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if guide:
            self.parts.append(f'<div class="guide"><b>How to read this.</b> {render_text(guide)}</div>')

    def finding(self, s: str) -> None:
        """A sentence for the summary at the top of the page ("What this report found")."""
        self.findings.append(_text(s, "finding"))

    def text(self, s: str) -> None:
        """A paragraph."""
        s = _text(s, "text")
        self.parts.append(f"<p>{render_text(s)}</p>")

    def kpis(self, items: dict[str, Any]) -> None:
        """Key figures in a row, ``{label: value}``."""
        if not isinstance(items, Mapping):
            raise TypeError(f"kpis takes a mapping {{label: value}}, got {type(items).__name__}.")
        for k in items:
            _text(k, "a key figure's label")
        self.parts.append(
            "<div>"
            + "".join(f'<span class="kpi"><b>{html.escape(k)}</b>: {_fmt(v)}</span>' for k, v in items.items())
            + "</div>"
        )

    def table(self, rows: list[dict[str, Any]], caption: str | None = None, max_rows: int | None = None) -> None:
        """A table, one mapping per row; columns in the order they first appear in any row (a key missing from a row
        is an empty cell). ``max_rows`` rows are shown, with a note of how many more are in ``results.json``."""
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
            raise TypeError("table rows must be a list of mappings {column: value}.")
        caption = _text(caption, "caption", optional=True)
        if max_rows is not None:
            max_rows = check_int(max_rows, "max_rows", min=1)
        if not rows:
            return
        cols: list = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        shown = rows if max_rows is None else rows[:max_rows]
        out = ['<div class="table-wrap"><table>']
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>")
        for r in shown:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cls = ' class="text"' if isinstance(v, str) else ""
                cells.append(f"<td{cls}>{_fmt(v)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table></div>")
        if max_rows is not None and len(rows) > max_rows:
            out.append(f"<p><i>{len(rows) - max_rows} more rows in results.json.</i></p>")
        self.parts.append("".join(out))

    def figure(self, fig: Any, caption: str, *, out_dir: str | None = None, name: str | None = None) -> None:
        """A matplotlib figure, embedded as PNG (and saved to ``out_dir/figures/name.png`` when both are given)."""
        caption = _text(caption, "caption")
        if not hasattr(fig, "savefig"):
            raise TypeError(f"figure takes a matplotlib Figure, got {type(fig).__name__}.")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = buf.getvalue()
        if out_dir is not None and name is not None:
            os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
            with open(os.path.join(out_dir, "figures", name + ".png"), "wb") as f:
                f.write(data)
        import matplotlib.pyplot as plt

        plt.close(fig)
        b64 = base64.b64encode(data).decode()
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def error(self, what: str, err: BaseException) -> None:
        self.parts.append(
            f'<p class="warn">{html.escape(what)} failed: {html.escape(type(err).__name__)}: '
            f"{html.escape(str(err))}</p>"
        )

    def html(self, footer: str = "") -> str:
        """The page as one string (what :meth:`write` saves)."""
        toc = "<ol>" + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.toc) + "</ol>"
        found = ""
        if self.findings:
            found = (
                '<div class="findings"><b>What this report found.</b><ul>'
                + "".join(f"<li>{render_text(s)}</li>" for s in self.findings)
                + "</ul></div>"
            )
        return (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{found}{toc}"
            + "\n".join(self.parts)
            + f"<footer>{html.escape(footer)}</footer></body></html>"
        )

    def write(self, out_dir: str, footer: str = "") -> str:
        """Write ``out_dir/index.html`` and ``out_dir/results.json``; returns the HTML path. Both are formed in full
        first (a result with no JSON form raises before anything is written) and each file is replaced whole."""
        footer = _text(footer, "footer")
        page = self.html(footer)
        data = json.dumps(to_jsonable(self.results), indent=1, allow_nan=False)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "index.html")
        for name, text in (("results.json", data), ("index.html", page)):
            target = os.path.join(out_dir, name)
            tmp = f"{target}.tmp{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return path
