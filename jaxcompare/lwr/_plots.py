"""Figures for the linear-width simulator (matplotlib, imported lazily). Every function returns the ``Figure``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .._optional import optional_import
from .._validation import check_choice, check_int
from ._config import LWRConfig
from ._theory import MATRICES, limit_atoms, limit_density

__all__ = ["plot_spectra", "plot_spectra_grid", "plot_spike_vs_step", "plot_tail_exponents"]

_LABELS = {"weights": "weights  WᵀW/h", "ck": "conjugate kernel", "ntk": "NTK  K_W + K_CK", "ntk_w": "NTK  K_W"}
_FIELDS = {"weights": "eig_weights", "ck": "eig_ck", "ntk": "eig_ntk"}


def _plt():
    plt = optional_import("matplotlib.pyplot", purpose="jaxcompare.lwr figures")
    return plt


def _eigs_of(source, matrix: str, step: int) -> np.ndarray:
    """Eigenvalues from an array, a History or a TrainResult (any leading seed axes are pooled)."""
    hist = getattr(source, "history", source)
    if hasattr(hist, "eig_weights"):
        if matrix not in _FIELDS:
            raise ValueError(f"a History records {tuple(_FIELDS)}; got matrix={matrix!r}.")
        e = np.asarray(getattr(hist, _FIELDS[matrix]), np.float64)
        if e.shape[-1] == 0:
            raise ValueError("this History has no spectra (it was trained with spectra=False).")
        e = np.take(e, step, axis=-2)
    else:
        e = np.asarray(source, np.float64)
    e = e.ravel()
    if e.size == 0 or not np.all(np.isfinite(e)):
        raise ValueError("eigenvalues must be a non-empty finite array.")
    return e


def plot_spectra(
    source,
    cfg: LWRConfig,
    matrix: str = "weights",
    *,
    step: int = -1,
    ax=None,
    bins: int = 60,
    theory: bool = True,
    label: str | None = None,
    logy: bool = False,
):
    """Histogram of an empirical spectrum over the limiting density at initialization.

    Args:
      source: eigenvalues (any shape, pooled), a :class:`History` or a :class:`TrainResult` (possibly with a leading
        seed axis from ``vmap``).
      cfg: the :class:`LWRConfig` the spectrum belongs to (for the theory curve).
      matrix: ``"weights"``, ``"ck"``, ``"ntk"`` (or ``"ntk_w"`` for raw eigenvalues).
      step: which record of a History (default: the last).
      ax: matplotlib axes to draw on (a new figure otherwise).
      bins: histogram bins.
      theory: overlay the limiting density (Marchenko–Pastur / Fan–Wang) and the atoms' masses.
      label: legend label of the histogram.
      logy: logarithmic density axis (shows tails and outliers).

    Returns:
      ``matplotlib.figure.Figure``.
    """
    check_choice(matrix, "matrix", MATRICES)
    bins = check_int(bins, "bins", min=2)
    plt = _plt()
    e = _eigs_of(source, matrix, step)
    atoms = limit_atoms(cfg, matrix)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
    else:
        fig = ax.figure
    cont = e[e > 1e-6 * max(1.0, e.max())] if atoms else e
    w = np.full(cont.shape, 1.0 / e.size)
    counts, edges = np.histogram(cont, bins=bins, weights=w)
    ax.bar(
        edges[:-1],
        counts / np.diff(edges),
        width=np.diff(edges),
        align="edge",
        alpha=0.5,
        color="C0",
        label=label or "empirical",
    )
    if theory:
        hi = max(edges[-1], 1e-3)
        x = np.linspace(max(1e-4, 0.0), hi, 600)
        ax.plot(x, limit_density(cfg, x, matrix), color="C3", lw=1.5, label="limit at init")
        for loc, mass in atoms:
            ax.annotate(f"+ atom of mass {mass:.2f} at {loc:g}", xy=(0.35, 0.6), xycoords="axes fraction", fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_title(_LABELS[matrix], fontsize=10)
    ax.set_xlabel("eigenvalue")
    ax.legend(fontsize=7)
    return fig


def plot_spectra_grid(
    results: Mapping[str, object],
    cfg: LWRConfig,
    *,
    matrices: Sequence[str] = ("weights", "ck", "ntk"),
    step: int = -1,
    bins: int = 60,
    logy: bool = True,
):
    """A grid of spectra: one row per run (e.g. optimizer), one column per matrix, each over the limiting law.

    Args:
      results: ``{name: TrainResult or History}`` (seed axes pooled).
      cfg: the shared :class:`LWRConfig`.
      matrices: columns.
      step: record index.
      bins, logy: as in :func:`plot_spectra`.

    Returns:
      ``matplotlib.figure.Figure``.
    """
    if not results:
        raise ValueError("results must map at least one name to a TrainResult or History.")
    plt = _plt()
    rows, cols = len(results), len(matrices)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for i, (name, res) in enumerate(results.items()):
        for j, m in enumerate(matrices):
            plot_spectra(res, cfg, m, step=step, ax=axes[i, j], bins=bins, label=name, logy=logy)
            if j == 0:
                axes[i, j].set_ylabel(name)
    fig.tight_layout()
    return fig


def plot_spike_vs_step(check, *, ax=None):
    """Top eigenvalue of ``Σ`` and alignment ``|⟨u₁, β⟩|`` after one GD step against ``η/n``, beside the BBP
    predictions and the Marchenko–Pastur edge.

    Args:
      check: a :class:`SpikeCheck` from :func:`check_spike`.
      ax: optional pair of axes.

    Returns:
      ``matplotlib.figure.Figure``.
    """
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    else:
        fig = ax[0].figure
    r = np.asarray(check.lr_over_n)
    ax[0].plot(r, check.top_eig, "o-", label="measured")
    ax[0].plot(r, check.top_eig_bbp, "s--", label="BBP")
    ax[0].plot(r, check.top_eig_naive, "^:", color="gray", label="BBP, push taken independent of W₀")
    ax[0].axhline(check.mp_edge, color="gray", ls=":", label="MP edge")
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("η / n")
    ax[0].set_ylabel("top eigenvalue of WᵀW/h")
    ax[0].legend(fontsize=8)
    ax[1].plot(r, check.align, "o-", label="measured")
    ax[1].plot(r, check.align_bbp, "s--", label="BBP")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("η / n")
    ax[1].set_ylabel("|⟨u₁, β⟩|")
    ax[1].set_ylim(0, 1)
    ax[1].legend(fontsize=8)
    from matplotlib.ticker import NullFormatter

    for a in ax:
        a.set_xticks(r)
        a.set_xticklabels([f"{x:g}" for x in r])
        a.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return fig


def plot_tail_exponents(results: Mapping[str, object], *, min_tail: int = 20, ax=None):
    """Power-law tail exponent (Clauset MLE ± 1 s.e.) of the spectrum of ``Σ`` at each recorded step, per run.

    Args:
      results: ``{name: TrainResult or History}`` without seed axes.
      min_tail: smallest tail size of the fit.
      ax: optional axes.

    Returns:
      ``matplotlib.figure.Figure``.
    """
    import jax

    from ..spectra import powerlaw_fit

    if not results:
        raise ValueError("results must map at least one name to a TrainResult or History.")
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    for name, res in results.items():
        hist = getattr(res, "history", res)
        e = np.asarray(hist.eig_weights, np.float64)
        if e.ndim != 2 or e.shape[1] == 0:
            raise ValueError(f"{name}: expected a History with spectra of shape (records, d), got {e.shape}.")
        rank = min(e.shape[1], int(np.sum(e[0] > 1e-8 * e[0].max())))
        top = np.maximum(e[:, :rank], 1e-12)
        fits = jax.vmap(lambda x: powerlaw_fit(x, min_tail=min_tail))(top)
        steps = np.asarray(hist.step)
        a, s = np.asarray(fits.alpha), np.asarray(fits.sigma)
        ax.errorbar(steps, a, yerr=s, marker="o", ms=3, capsize=2, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("tail exponent α of WᵀW/h")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
