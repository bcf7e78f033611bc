"""Figures for the microscope (matplotlib imported lazily). Every function returns a ``matplotlib.figure.Figure``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validation import check_array, check_labels

__all__ = ["plot_projection", "plot_microscope"]


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A figure not registered with pyplot (no global state, nothing to close)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover
        raise ImportError("embed plots need matplotlib: pip install 'jaxcompare[demo]'.") from None
    return Figure(figsize=figsize)


def _source_names(labels: np.ndarray, names: Sequence[str] | None) -> list[str]:
    K = int(labels.max()) + 1
    if names is None:
        return [f"source {i}" for i in range(K)]
    names = list(names)
    if len(names) < K:
        raise ValueError(f"names has {len(names)} entries but labels go up to {K - 1}.")
    return [str(s) for s in names]


def plot_projection(
    Z: Any,
    labels: Any,
    *,
    names: Sequence[str] | None = None,
    dims: tuple[int, int] = (0, 1),
    ax: Any = None,
    title: str | None = None,
    axis_label: str = "component",
    bins: int = 40,
) -> Any:
    """Scatter of projected samples coloured by source (overlaid histograms when ``Z`` has one column).

    Args:
      Z: ``(n, k)`` projected coordinates (e.g. ``pca(...).apply``); ``(n,)`` or ``k == 1`` draws histograms.
      labels: ``(n,)`` integer sources.
      names: source names for the legend.
      dims: the two columns to plot when ``k >= 2``.
      ax: an existing matplotlib ``Axes`` to draw into (its figure is returned); a new figure otherwise.
      title: axes title.
      axis_label: axis label stem (``"PC"`` gives ``PC1``, ``PC2``).
      bins: histogram bins for one-dimensional projections.

    Returns:
      ``matplotlib.figure.Figure``.

    Example:
      >>> X = jax.random.normal(jax.random.key(0), (40, 5))
      >>> sources = jnp.arange(40) % 2
      >>> t = embed.pca(2)
      >>> fig = embed.plot_projection(t.apply(t.fit(X), X), sources, names=("human", "llm"), axis_label="PC")
      >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
      ('PC1', 'PC2')
      >>> fig.savefig("projection.png")
    """
    Z = np.asarray(check_array(Z, "Z", ndim=(1, 2)))
    if Z.ndim == 1:
        Z = Z[:, None]
    y = np.asarray(check_labels(labels, "labels", length=Z.shape[0]))
    nm = _source_names(y, names)
    if ax is None:
        fig = _new_figure((5.0, 4.0))
        ax = fig.subplots()
    else:
        fig = ax.figure
    if Z.shape[1] == 1:
        edges = np.histogram_bin_edges(Z[:, 0], bins=bins)
        for c, name in enumerate(nm):
            if np.any(y == c):
                ax.hist(Z[y == c, 0], bins=edges, alpha=0.55, label=name, density=True)
        ax.set_xlabel(f"{axis_label}1")
        ax.set_ylabel("density")
    else:
        i, j = dims
        if not (0 <= i < Z.shape[1] and 0 <= j < Z.shape[1]):
            raise ValueError(f"dims={dims} out of range for Z with {Z.shape[1]} columns.")
        for c, name in enumerate(nm):
            m = y == c
            if np.any(m):
                ax.scatter(Z[m, i], Z[m, j], s=8, alpha=0.6, label=name)
        ax.set_xlabel(f"{axis_label}{i + 1}")
        ax.set_ylabel(f"{axis_label}{j + 1}")
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_microscope(
    X: Any,
    labels: Any,
    *,
    names: Sequence[str] | None = None,
    shrinkage: Any = "auto",
    hidden: Any = None,
) -> Any:
    """The microscope's overview figure: PCA (PC1 vs PC2) and LDA projections coloured by source.

    The LDA panel is a histogram per source when there are two sources (one discriminant direction), a scatter of the
    first two discriminants otherwise. It shows the training data projected on directions fitted to it, so the
    separation looks better than it generalises (in high dimension, much better); :func:`separability` gives the
    held-out figure. With ``hidden`` labels (e.g. topic or digit), a third panel colours the PCA
    projection by them, to show whether PCA recovers them.

    Args:
      X: ``(n, d)`` embeddings.
      labels: ``(n,)`` integer sources.
      names: source names.
      shrinkage: LDA shrinkage (see :func:`lda`).
      hidden: optional ``(n,)`` integer labels of a hidden variable.

    Returns:
      ``matplotlib.figure.Figure`` with two (or three) panels.

    Example:
      >>> demo = embed.make_demo_embeddings(jax.random.key(0), n_per_source=100, dim=16)
      >>> fig = embed.plot_microscope(demo.embeddings, demo.labels, names=demo.names, hidden=demo.digits)
      >>> [ax.get_title() for ax in fig.axes[1:3]]   # fig.axes[0] is the PCA panel, fig.axes[3] the colour bar
      ['LDA (between-source directions)', 'PCA coloured by hidden label']
      >>> fig.savefig("microscope.png")
    """
    from ._lda import lda
    from ._pca import pca

    tp = pca(2)
    sp = tp.fit(X)
    Zp = tp.apply(sp, X)
    tl = lda(shrinkage=shrinkage)
    sl = tl.fit(X, labels)
    Zl = tl.apply(sl, X)
    ncol = 2 if hidden is None else 3
    fig = _new_figure((4.6 * ncol, 4.0))
    axes = fig.subplots(1, ncol)
    r = np.asarray(sp.explained_variance_ratio)
    plot_projection(
        Zp,
        labels,
        names=names,
        ax=axes[0],
        axis_label="PC",
        title=f"PCA (PC1 {100 * r[0]:.1f}%, PC2 {100 * r[1]:.1f}% of variance)",
    )
    plot_projection(Zl, labels, names=names, ax=axes[1], axis_label="LD", title="LDA (between-source directions)")
    if hidden is not None:
        h = np.asarray(check_labels(hidden, "hidden", length=Zp.shape[0]))
        sc = axes[2].scatter(np.asarray(Zp[:, 0]), np.asarray(Zp[:, 1]), c=h, s=8, cmap="tab10", alpha=0.7)
        axes[2].set_xlabel("PC1")
        axes[2].set_ylabel("PC2")
        axes[2].set_title("PCA coloured by hidden label")
        fig.colorbar(sc, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return fig
