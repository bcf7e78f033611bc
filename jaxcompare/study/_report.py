"""A self-contained HTML report (figures embedded as PNG data URIs) and a results.json beside it.

Every piece of text is HTML-escaped (``|<u1, β>|`` stays visible); the only markup a caller can ask for is inline
code between backticks. Tables scroll inside their own wrapper and images shrink to the page, so nothing is cut at
narrow widths.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import re
from typing import Any

import numpy as np

__all__ = ["Report", "to_jsonable", "render_text"]


def to_jsonable(x: Any) -> Any:
    """Arrays, numpy scalars, dataclasses and NaN made JSON-friendly (NaN/inf become null).

    Example:
      >>> from jaxcompare.study import to_jsonable
      >>> to_jsonable({"a": np.array([1.5, np.nan]), "b": np.int32(3)})
      {'a': [1.5, None], 'b': 3}
    """
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        a = np.asarray(x)
        if a.dtype.kind in "fc":
            a = a.astype(float)
            return to_jsonable(a.tolist()) if a.ndim else (float(a) if np.isfinite(a) else None)
        return a.tolist()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


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
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "—"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return html.escape(str(v))


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
        self.title = title
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
        anchor = f"{self.anchor_prefix}s{len(self.toc)}"
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if guide:
            self.parts.append(f'<div class="guide"><b>How to read this.</b> {render_text(guide)}</div>')

    def finding(self, s: str) -> None:
        """A sentence for the summary at the top of the page ("What this report found")."""
        self.findings.append(s)

    def text(self, s: str) -> None:
        self.parts.append(f"<p>{render_text(s)}</p>")

    def kpis(self, items: dict[str, Any]) -> None:
        self.parts.append(
            "<div>"
            + "".join(f'<span class="kpi"><b>{html.escape(k)}</b>: {_fmt(v)}</span>' for k, v in items.items())
            + "</div>"
        )

    def table(self, rows: list[dict[str, Any]], caption: str | None = None, max_rows: int | None = None) -> None:
        if not rows:
            return
        cols = list(rows[0].keys())
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
        """Write ``out_dir/index.html`` and ``out_dir/results.json``; returns the HTML path."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "index.html")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html(footer))
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(to_jsonable(self.results), f, indent=1, allow_nan=False)
        return path
