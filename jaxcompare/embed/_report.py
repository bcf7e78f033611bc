"""A markdown section summarising what the microscope sees (for the main job's report)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._validation import check_int, check_key
from ._common import check_class_labels, check_data

__all__ = ["microscope_report"]


def microscope_report(
    X: Any,
    labels: Any,
    *,
    key: Any,
    names: Sequence[str] | None = None,
    hidden: Any = None,
    figure_path: Any = None,
    n_permutations: int = 500,
    k: int = 5,
) -> str:
    """Run the microscope on labelled embeddings and return a markdown report section.

    Contents: data size; variance explained by the first principal components; held-out LDA separability with its
    95% Wilson interval and chance level; a permutation MMD two-sample test for every pair of sources; the ``k``
    samples furthest along each end of the first LDA direction; the overview figure (:func:`plot_microscope`) saved
    to ``figure_path`` (PNG) and linked by its file name when given.

    Args:
      X: ``(n, d)`` embeddings.
      labels: ``(n,)`` integer sources.
      key: PRNG key.
      names: source names.
      hidden: optional hidden labels for the figure's third panel.
      figure_path: where to save the figure (``None``: no figure).
      n_permutations: permutations per two-sample test.
      k: number of extreme samples listed per end.

    Returns:
      Markdown text starting with a ``## Embedding microscope`` heading.

    Example:
      >>> demo = embed.make_demo_embeddings(jax.random.key(0), n_per_source=100, dim=16)
      >>> md = embed.microscope_report(demo.embeddings, demo.labels, key=jax.random.key(1), names=demo.names)
      >>> md.splitlines()[0]
      '## Embedding microscope'
    """
    from ._extremes import extremes
    from ._lda import lda
    from ._pca import pca
    from ._separability import separability
    from ._two_sample import two_sample_test

    key = check_key(key)
    X = check_data(X, "X")
    n, d = X.shape
    y, K = check_class_labels(labels, n, None)
    k = check_int(k, "k", min=1)
    yn = np.asarray(y)
    nm = [f"source {i}" for i in range(K)] if names is None else [str(s) for s in names]
    if len(nm) < K:
        raise ValueError(f"names has {len(nm)} entries but there are {K} sources.")
    k_sep, k_test = jax.random.split(key)
    lines = ["## Embedding microscope", ""]
    counts = ", ".join(f"{nm[c]}: {int(np.sum(yn == c))}" for c in range(K))
    lines += [f"{n} samples of dimension {d} from {K} sources ({counts}).", ""]
    n_pc = min(5, n, d)
    sp = pca(n_pc).fit(X)
    r = np.asarray(sp.explained_variance_ratio)
    lines += [
        "Variance explained by the first principal components: "
        + ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(r))
        + ".",
        "",
    ]
    sep = separability(k_sep, X, y)
    lines += [
        f"Held-out LDA accuracy (5-fold, Ledoit-Wolf shrinkage): **{float(sep.accuracy):.3f}** "
        f"(95% Wilson interval [{float(sep.ci_low):.3f}, {float(sep.ci_high):.3f}]; chance {float(sep.chance):.3f}).",
        "",
        "| sources | MMD² (unbiased) | permutation p-value | permutations |",
        "| --- | --- | --- | --- |",
    ]
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K) if np.any(yn == i) and np.any(yn == j)]
    keys = jax.random.split(k_test, max(len(pairs), 1))
    Xn = np.asarray(X)
    for (i, j), kk in zip(pairs, keys):
        t = two_sample_test(kk, Xn[yn == i], Xn[yn == j], n_permutations=n_permutations)
        lines.append(f"| {nm[i]} vs {nm[j]} | {float(t.statistic):.4g} | {float(t.p_value):.4g} | {t.n_permutations} |")
    lines.append("")
    sl = lda(shrinkage="auto").fit(X, y)
    ex = extremes(X, sl.scalings[:, 0], k=min(k, n))
    lines += [
        f"Samples furthest along the first LDA direction (towards higher source index): "
        f"{np.asarray(ex.top_indices).tolist()}; furthest the other way: {np.asarray(ex.bottom_indices).tolist()}.",
        "",
    ]
    if figure_path is not None:
        from ._plots import plot_microscope

        fig = plot_microscope(X, y, names=nm, hidden=hidden)
        fig.savefig(os.fspath(figure_path), dpi=110)
        lines += [f"![PCA and LDA projections coloured by source]({os.path.basename(os.fspath(figure_path))})", ""]
    return "\n".join(lines)
