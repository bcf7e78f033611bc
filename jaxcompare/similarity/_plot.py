"""Figure: heatmap of a kernel-similarity matrix with permutation p-values (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._optional import optional_import
from .._validation import check_flag
from ._kernel_similarity import KernelSimilarity

__all__ = ["plot_similarity"]


def _import_pyplot():
    plt = optional_import("matplotlib.pyplot", purpose="plot_similarity")
    return plt


def plot_similarity(
    result: KernelSimilarity, ax: Any = None, *, annotate: bool | None = None, cmap: str | None = None
) -> Any:
    """Heatmap of ``result.cka``; each off-diagonal cell shows the CKA and its permutation p-value.

    Colour scale: the debiased CKA (or any matrix with a negative value) is drawn on the symmetric scale
    ``[-1, 1]`` of a diverging colormap (``"RdBu_r"``: 0 white, negative blue, positive red), so a negative CKA
    looks negative rather than merely "small"; a biased CKA (never negative) on ``[0, 1]`` (``"viridis"``).
    The diagonal (a kernel against itself: CKA 1 by definition, and the p-value of a test of a kernel against its
    own permutations, which says nothing about the pair) is masked in grey and marked "self".

    Args:
      result: from :func:`kernel_similarity`.
      ax: a matplotlib ``Axes`` to draw into (default: a new figure).
      annotate: write ``CKA`` and ``p`` in each cell (default: when there are at most 12 models).
      cmap: colormap name (default: ``"RdBu_r"`` on ``[-1, 1]`` or ``"viridis"`` on ``[0, 1]``, as above).

    Returns:
      The matplotlib ``Figure``.

    Example:
      >>> from jaxcompare.similarity import KernelSimilarity, plot_similarity
      >>> res = KernelSimilarity(cka=jnp.array([[1.0, -0.3], [-0.3, 1.0]]), p_value=jnp.array([[0.001, 0.02],
      ...                        [0.02, 0.001]]), null_mean=jnp.zeros((2, 2)), null_sd=jnp.full((2, 2), 0.05),
      ...                        kernel="trntk", label="trNTK", names=("a", "b"), n_permutations=999, debiased=True)
      >>> fig = plot_similarity(res)
      >>> fig.axes[0].get_title(), fig.axes[0].images[0].get_clim()
      ('debiased CKA of trNTK kernels (999 permutations)', (-1.0, 1.0))
      >>> import matplotlib.pyplot as plt
      >>> plt.close(fig)
    """
    if not isinstance(result, KernelSimilarity):
        raise TypeError(f"result must come from kernel_similarity(), got {type(result).__name__}.")
    if cmap is not None and not isinstance(cmap, str):
        raise TypeError(f"cmap must be a matplotlib colormap name or None, got {type(cmap).__name__}.")
    plt = _import_pyplot()
    c = np.asarray(result.cka, dtype=np.float64)
    p = np.asarray(result.p_value, dtype=np.float64)
    m = c.shape[0]
    if annotate is not None:
        check_flag(annotate, "annotate")
    if annotate is None:
        annotate = m <= 12
    if ax is None:
        size = max(3.5, 0.7 * m + 1.5)
        fig, ax = plt.subplots(figsize=(size + 1.0, size))
    else:
        fig = ax.figure
    off = ~np.eye(m, dtype=bool)
    signed = bool(result.debiased) or bool(np.any(c[off] < 0))
    lo = -1.0 if signed else 0.0
    # values outside the scale (rounding past ±1) are clipped by the colormap, never silently rescaled
    colormap = plt.get_cmap(cmap or ("RdBu_r" if signed else "viridis")).with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_array(c, mask=~off), cmap=colormap, vmin=lo, vmax=1.0)
    fig.colorbar(im, ax=ax, label="CKA")
    ax.set_xticks(range(m), result.names, rotation=45, ha="right")
    ax.set_yticks(range(m), result.names)
    kind = "debiased" if result.debiased else "biased"
    ax.set_title(f"{kind} CKA of {result.label} kernels ({result.n_permutations} permutations)")
    if annotate:
        for i in range(m):
            for j in range(m):
                if i == j:
                    ax.text(j, i, "self", ha="center", va="center", fontsize=7, color="#555555")
                    continue
                r, g, b, _ = colormap(im.norm(c[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived luminance of the cell's colour
                ax.text(
                    j,
                    i,
                    f"{c[i, j]:.2f}\np={p[i, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    fig.tight_layout()
    return fig
