"""One way to print a number in a report (the study's page, the comparison report): four significant digits, never
a rounding that reads as an exact value, ``—`` for what is missing."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

__all__ = ["format_value"]


def _float(v: float) -> str:
    if not math.isfinite(v):
        return "—"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.2e}"
    s = f"{v:.4g}"
    if v == int(v) or "e" in s or float(s) != int(float(s)):
        return s
    # 0.99996 at four digits reads "1": an AUROC or accuracy that looks perfect and is not
    for digits in range(5, 9):
        s = f"{v:.{digits}g}"
        if float(s) != int(float(s)):
            return s
    return "≈" + s


def format_value(v: Any, *, true: str = "yes", false: str = "no") -> str:
    """HTML text of one table cell or key figure: numbers (Python, NumPy or 0-d JAX arrays) to four significant
    digits (more when four would round a fraction to a whole number), ``—`` for ``None``/NaN/inf, booleans as
    ``true``/``false``, anything else escaped.

    Example:
      >>> from jaxcompare._format import format_value
      >>> [format_value(v) for v in (0.712345, 0.99996, 1.0, 12345678, 2e-5, float("nan"), None, True, "<b>")]
      ['0.7123', '0.99996', '1', '12345678', '2.00e-05', '—', '—', 'yes', '&lt;b&gt;']
    """
    if v is None:
        return "—"
    if hasattr(v, "shape") and hasattr(v, "dtype") and np.shape(v) == ():
        v = np.asarray(v).item() if np.asarray(v).dtype.kind in "biufc" else np.asarray(v).astype(np.float64).item()
    if isinstance(v, (bool, np.bool_)):
        return true if v else false
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _float(float(v))
    return html.escape(str(v))
