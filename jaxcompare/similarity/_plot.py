"""Figure: heatmap of a kernel-similarity matrix with permutation p-values (matplotlib, imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._optional import optional_import
from ._kernel_similarity import KernelSimilarity

__all__ = ["plot_similarity"]


def _import_pyplot():
    plt = optional_import("matplotlib.pyplot", purpose="plot_similarity")
    return plt


def plot_similarity(
    result: KernelSimilarity, ax: Any = None, *, annotate: bool | None = None, cmap: str = "viridis"
) -> Any:
    """Heatmap of ``result.cka``; each cell shows the CKA and its permutation p-value.

    Args:
      result: from :func:`kernel_similarity`.
      ax: a matplotlib ``Axes`` to draw into (default: a new figure).
      annotate: write ``CKA`` and ``p`` in each cell (default: when there are at most 12 models).
      cmap: colormap; the colour scale runs from ``min(0, min CKA)`` to 1.

    Returns:
      The matplotlib ``Figure``.

    Example:
      >>> from jaxcompare.similarity import KernelSimilarity, plot_similarity
      >>> res = KernelSimilarity(cka=jnp.array([[1.0, 0.3], [0.3, 1.0]]), p_value=jnp.array([[0.001, 0.02],
      ...                        [0.02, 0.001]]), null_mean=jnp.zeros((2, 2)), null_sd=jnp.full((2, 2), 0.05),
      ...                        kernel="trntk", label="trNTK", names=("a", "b"), n_permutations=999, debiased=True)
      >>> fig = plot_similarity(res)
      >>> fig.axes[0].get_title()
      'debiased CKA of trNTK kernels (999 permutations)'
      >>> import matplotlib.pyplot as plt
      >>> plt.close(fig)
    """
    if not isinstance(result, KernelSimilarity):
        raise TypeError(f"result must come from kernel_similarity(), got {type(result).__name__}.")
    plt = _import_pyplot()
    c = np.asarray(result.cka, dtype=np.float64)
    p = np.asarray(result.p_value, dtype=np.float64)
    m = c.shape[0]
    if annotate is None:
        annotate = m <= 12
    if ax is None:
        size = max(3.5, 0.7 * m + 1.5)
        fig, ax = plt.subplots(figsize=(size + 1.0, size))
    else:
        fig = ax.figure
    im = ax.imshow(c, cmap=cmap, vmin=min(0.0, float(np.nanmin(c))), vmax=1.0)
    fig.colorbar(im, ax=ax, label="CKA")
    ax.set_xticks(range(m), result.names, rotation=45, ha="right")
    ax.set_yticks(range(m), result.names)
    kind = "debiased" if result.debiased else "biased"
    ax.set_title(f"{kind} CKA of {result.label} kernels ({result.n_permutations} permutations)")
    if annotate:
        lo, hi = im.get_clim()
        for i in range(m):
            for j in range(m):
                light = (c[i, j] - lo) / max(hi - lo, 1e-12) < 0.6
                ax.text(
                    j,
                    i,
                    f"{c[i, j]:.2f}\np={p[i, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if light else "black",
                )
    fig.tight_layout()
    return fig
