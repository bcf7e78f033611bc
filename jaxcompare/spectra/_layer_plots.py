"""Figure of a per-layer spectral analysis: one log-log ESD panel per layer (matplotlib, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._optional import optional_import
from .._validation import check_int
from ._layers import LayerSpectra
from ._marchenko_pastur import mp_density

__all__ = ["plot_layer_spectra"]


def _short(path: str, width: int = 34) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def _panel(ax, row, lam: np.ndarray, bins: int) -> None:
    pos = lam[lam > 0]
    lo, hi = float(pos.min()), float(pos.max())
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    bins = max(8, min(bins, pos.size // 4))  # few eigenvalues: fewer, wider bins
    edges = np.geomspace(lo, hi * 1.0001, bins + 1)
    dens, _ = np.histogram(pos, bins=edges)
    dens = dens / (lam.size * np.diff(edges))  # density of the whole spectrum (zeros included in the mass)
    ax.stairs(np.where(dens > 0, dens, np.nan), edges, fill=True, color="0.75", label="ESD (histogram)")
    s2, c = row["mp_sigma2"], row["ratio"]
    if np.isfinite(s2):
        lm, lp = s2 * (1 - math.sqrt(c)) ** 2, s2 * (1 + math.sqrt(c)) ** 2
        x = np.geomspace(max(lm, lo / 2), lp, 400)[1:-1]  # only on the support: no tails beyond the bulk edge
        ax.plot(x, mp_density(x / s2, c) / s2, color="tab:blue", lw=1.6, label=f"MP fit, σ²={s2:.3g}")
        ax.axvline(row["outlier_threshold"], color="tab:blue", ls=":", lw=1.2,
                   label=f"outlier threshold ({row['n_outliers']} above)")  # fmt: skip
    a, xmin = row["alpha"], row["xmin"]
    if np.isfinite(a):
        x = np.geomspace(xmin, hi, 100)
        frac = row["n_tail"] / lam.size
        ax.plot(x, frac * (a - 1) / xmin * (x / xmin) ** (-a), color="tab:red", lw=1.6,
                label=f"power law α={a:.2f}±{row['alpha_sigma']:.2f}")  # fmt: skip
        ax.axvline(xmin, color="tab:red", ls="--", lw=1.2, label=f"xmin={xmin:.3g} ({row['n_tail']} pts)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, (a0, a1) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        axis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
        if math.log10(a1 / a0) < 1.5:
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("eigenvalue λ of WᵀW/N")
    ax.set_ylabel("density")
    shape = "×".join(str(s) for s in row["shape"])
    ax.set_title(f"{_short(row['path'])}\n{shape} ({row['matrix']}), N={row['n']}, M={row['m']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def plot_layer_spectra(
    result: LayerSpectra,
    *,
    layers: Sequence[str] | None = None,
    ncols: int = 3,
    bins: int = 50,
    path: str | None = None,
    dpi: int = 120,
):
    """Log-log empirical spectral density of each analysed layer with its fits, one panel per layer.

    Each panel shows the histogram of the eigenvalues of ``WᵀW/N`` (log-spaced bins, density of the whole
    spectrum), the fitted Marchenko–Pastur density drawn on its support only, the outlier threshold (dotted), and the
    power-law tail fit ``(n_tail/M)(α − 1)/xmin · (λ/xmin)^{−α}`` from ``xmin`` (dashed) to ``λ_max``.

    Args:
      result: :class:`LayerSpectra` from :func:`analyze_params`.
      layers: paths to draw (default: every analysed layer, in order).
      ncols: panels per row.
      bins: histogram bins per panel.
      path: if given, the figure is saved there (PNG/PDF/SVG by extension).
      dpi: resolution when saving.

    Returns:
      the ``matplotlib.figure.Figure`` (needs matplotlib: ``pip install 'jaxcompare[demo]'``).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> params = {"a": {"kernel": rng.standard_normal((300, 100))}, "b": {"kernel": rng.standard_t(3, (200, 80))}}
      >>> res = spectra.analyze_params(params)
      >>> fig = plot_layer_spectra(res)
      >>> len(fig.axes), fig.axes[0].get_xlabel()
      (2, 'eigenvalue λ of WᵀW/N')
    """
    if not isinstance(result, LayerSpectra):
        raise TypeError(f"result must be a LayerSpectra from analyze_params, got {type(result).__name__}.")
    ncols = check_int(ncols, "ncols", min=1)
    bins = check_int(bins, "bins", min=2)
    dpi = check_int(dpi, "dpi", min=10)
    known = [r["path"] for r in result.rows]
    if layers is None:
        layers = known
    if isinstance(layers, str) or not len(layers):
        raise ValueError(f"layers must be a non-empty list of analysed paths, got {layers!r}.")
    unknown = [p for p in layers if p not in known]
    if unknown:
        raise ValueError(f"layers has paths that were not analysed: {unknown}; analysed: {known}.")
    plt = optional_import("matplotlib.pyplot", purpose="plot_layer_spectra")
    ncols = min(ncols, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.6 * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), layers):
        _panel(ax, result.row(p), np.asarray(result.eigenvalues[p], dtype=np.float64), bins)
    for ax in axes.ravel()[len(layers) :]:
        ax.set_visible(False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
