"""Small HTML and figure helpers shared by the comparison report's modules (text is always escaped)."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

from .._format import format_value

__all__ = ["_e", "_fmt", "_table", "_png", "_pyplot", "_short", "_figure_html"]


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    """A cell or key figure (:func:`jaxcompare._format.format_value`); a false flag is left blank."""
    return format_value(v, false="")


def _table(
    header: list[str], rows: list[list[str]], row_classes: list[str] | None = None, *, small: bool = False
) -> str:
    """``rows`` hold already-rendered cells (``<td ...>...</td>``)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f'<tr class="{c}">' + "".join(r) + "</tr>" for r, c in zip(rows, row_classes or [""] * len(rows)))
    cls = ' class="small"' if small else ""
    return f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _png(fig: Any, directory: str, name: str) -> str:
    """Save ``fig`` as ``directory/name`` and return its base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _short(name: str, width: int = 22) -> str:
    """A figure label: long names keep their start and end."""
    return name if len(name) <= width else name[: width // 2 - 1] + "…" + name[-(width - width // 2) :]


def _figure_html(b64: str, caption: str, name: str) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{b64}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)} (file: {_e(name)})</figcaption></figure>"
    )
