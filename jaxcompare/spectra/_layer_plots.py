"""Figures of a per-layer spectral analysis (matplotlib, imported lazily).

* :func:`plot_layer_spectra`: one log-log ESD panel per layer, for a chosen list of layers.
* :func:`layer_groups` / :func:`plot_layer_groups`: one figure per layer *group* (convolutions by width, attention,
  MLP, embeddings, other dense layers), readable for models with tens of layers.
* :func:`plot_layer_overview`: every layer of one or several models on one figure: tail exponent α, stable rank
  and outliers against the layer.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._optional import optional_import
from .._validation import check_int
from ._layers import LayerSpectra
from ._marchenko_pastur import mp_density

__all__ = ["plot_layer_spectra", "layer_groups", "plot_layer_groups", "plot_layer_overview", "group_file_name"]

# path components (lower case) that name a kind of layer; a component containing a "substring" entry counts too
_KINDS = (
    ("embeddings", ("embed",), ("wte", "wpe", "tok_embeddings", "lm_head")),
    ("attention", ("attn", "attention"), ("query", "key", "value", "qkv", "q_proj", "k_proj", "v_proj", "o_proj",
                                           "out_proj", "q", "k", "v", "o")),
    ("MLP", ("mlp", "ffn", "feedforward", "feed_forward"), ("fc1", "fc2", "intermediate", "up_proj", "down_proj",
                                                            "gate_proj", "wi", "wo", "c_fc", "c_proj")),
)  # fmt: skip


def _short(path: str, width: int = 34) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1) :]


def _panel(ax, row, lam: np.ndarray, bins: int, compact: bool = False) -> None:
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
    ax.set_title(f"{_short(row['path'])}\n{shape} ({row['matrix']}), N={row['n']}, M={row['m']}",
                 fontsize=8 if compact else 9)  # fmt: skip
    ax.legend(fontsize=6.5 if compact else 7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def plot_layer_spectra(
    result: LayerSpectra,
    *,
    layers: Sequence[str] | None = None,
    ncols: int = 3,
    bins: int = 50,
    path: str | None = None,
    dpi: int = 120,
    compact: bool = False,
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
      compact: smaller panels and fonts (the group figures of :func:`plot_layer_groups`).

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
    w, h = (4.4, 4.2) if compact else (5.2, 4.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), layers):
        _panel(ax, result.row(p), np.asarray(result.eigenvalues[p], dtype=np.float64), bins, compact)
    for ax in axes.ravel()[len(layers) :]:
        ax.set_visible(False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _natural(path: str) -> list:
    """Sort key that orders ``Block_2`` before ``Block_10`` (pytrees list dict keys alphabetically)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]


def _group_rank(label: str) -> tuple:
    """Groups in the usual order of a network: embeddings, convolutions (narrow to wide), attention, MLP, rest."""
    m = re.match(r"convolutions, (\d+) output channels", label)
    if m:
        return (1, int(m.group(1)))
    return ({"embeddings": 0, "attention": 2, "MLP": 3, "dense layers": 4}.get(label, 5), 0)


def _kind(row: Mapping[str, Any]) -> str:
    parts = [p.lower() for p in str(row["path"]).split("/")[:-1]] or [str(row["path"]).lower()]
    for label, substrings, names in _KINDS:
        if any(p in names or any(sub in p for sub in substrings) for p in parts):
            return label
    if str(row["matrix"]).startswith("conv"):
        return f"convolutions, {row['shape'][-1]} output channels"
    return "dense layers" if row["matrix"] == "dense" else "other matrices"


def layer_groups(result: LayerSpectra, *, max_panels: int = 12) -> dict[str, tuple[str, ...]]:
    """The analysed layers in groups, one figure each in :func:`plot_layer_groups`: ``{label: paths}``.

    Grouping, from the layer's path (its ``/``-joined pytree keys, lower case, without the leaf name) and kind:

    1. **embeddings**: a path component contains ``embed`` (or is ``wte``, ``wpe``, ``tok_embeddings``,
       ``lm_head``);
    2. **attention**: a component contains ``attn``/``attention`` or is a projection name (``query``, ``key``,
       ``value``, ``qkv``, ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``out_proj``, ``q``, ``k``, ``v``,
       ``o``);
    3. **MLP**: a component contains ``mlp``/``ffn``/``feedforward`` or is ``fc1``, ``fc2``, ``intermediate``,
       ``up_proj``, ``down_proj``, ``gate_proj``, ``wi``, ``wo``, ``c_fc``, ``c_proj``;
    4. **convolutions, C output channels**: other convolution kernels, by their number of output channels (a
       ResNet stage keeps its width, so these are its stages; a bottleneck's expanding convolutions join the
       group of their width);
    5. **dense layers**: every other 2-D kernel (**other matrices** for those given by ``matrix_fn``).

    Groups are listed in that order (convolutions narrow to wide), layers within a group in path order with
    numbers compared as numbers (``Block_2`` before ``Block_10``); a group of more than ``max_panels`` layers is
    split into parts of equal size labelled ``"(part i/n)"``.

    Args:
      result: :class:`LayerSpectra` from :func:`analyze_params`.
      max_panels: most layers per group (``>= 1``).

    Returns:
      ``{label: tuple of paths}``, every analysed layer in exactly one group.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> params = {"conv1": {"kernel": rng.standard_normal((3, 3, 16, 32))},
      ...           "attn": {"query": {"kernel": rng.standard_normal((64, 64))}},
      ...           "head": {"kernel": rng.standard_normal((32, 10))}}
      >>> for label, paths in layer_groups(spectra.analyze_params(params)).items():
      ...     print(f"{label}: {paths}")
      convolutions, 32 output channels: ('conv1/kernel',)
      attention: ('attn/query/kernel',)
      dense layers: ('head/kernel',)
    """
    if not isinstance(result, LayerSpectra):
        raise TypeError(f"result must be a LayerSpectra from analyze_params, got {type(result).__name__}.")
    max_panels = check_int(max_panels, "max_panels", min=1)
    groups: dict[str, list[str]] = {}
    for row in sorted(result.rows, key=lambda r: _natural(r["path"])):
        groups.setdefault(_kind(row), []).append(row["path"])
    out: dict[str, tuple[str, ...]] = {}
    for label in sorted(groups, key=_group_rank):
        paths = groups[label]
        n = math.ceil(len(paths) / max_panels)
        size = math.ceil(len(paths) / n)  # parts of equal size
        for i in range(n):
            out[label if n == 1 else f"{label} (part {i + 1}/{n})"] = tuple(paths[i * size : (i + 1) * size])
    return out


def group_file_name(label: str, prefix: str = "spectra") -> str:
    """File name of a group's figure: ``spectra_<label in lower case, non-alphanumerics as _>.png``."""
    if not isinstance(label, str):
        raise TypeError(f"label must be a layer group's name (str), got {type(label).__name__}.")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}.")
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return f"{prefix}_{slug}.png"


def plot_layer_groups(
    result: LayerSpectra,
    *,
    max_panels: int = 12,
    ncols: int = 4,
    bins: int = 40,
    directory: str | None = None,
    prefix: str = "spectra",
    dpi: int = 110,
) -> dict[str, Any]:
    """One figure per layer group (:func:`layer_groups`), each with one ESD panel per layer as in
    :func:`plot_layer_spectra`, titled by the group.

    Args:
      result: :class:`LayerSpectra` from :func:`analyze_params`.
      max_panels: most layers per figure (larger groups are split).
      ncols: panels per row.
      bins: histogram bins per panel.
      directory: if given, each figure is saved there as :func:`group_file_name` ``(label, prefix)``.
      prefix: file name prefix.
      dpi: resolution when saving.

    Returns:
      ``{group label: matplotlib Figure}`` in the order of :func:`layer_groups`.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> params = {f"block{i}": {"conv": {"kernel": rng.standard_normal((3, 3, 16, 16 * (1 + i // 2)))}}
      ...           for i in range(4)}
      >>> figs = plot_layer_groups(spectra.analyze_params(params))
      >>> {label: len([a for a in f.axes if a.get_visible()]) for label, f in figs.items()}
      {'convolutions, 16 output channels': 2, 'convolutions, 32 output channels': 2}
      >>> import matplotlib.pyplot as plt; plt.close("all")
    """
    groups = layer_groups(result, max_panels=max_panels)
    ncols = check_int(ncols, "ncols", min=1)
    dpi = check_int(dpi, "dpi", min=10)
    out = {}
    for label, paths in groups.items():
        cols = math.ceil(len(paths) / math.ceil(len(paths) / ncols))  # balanced rows: 5 panels as 3 + 2
        fig = plot_layer_spectra(result, layers=paths, ncols=cols, bins=bins, compact=True)
        fig.suptitle(f"{label}: {len(paths)} layer{'' if len(paths) == 1 else 's'}", fontsize=12, fontweight="bold")
        fig.tight_layout()
        if directory is not None:
            import os

            fig.savefig(os.path.join(directory, group_file_name(label, prefix)), dpi=dpi)
        out[label] = fig
    return out


def _column(rows: list, key: str) -> np.ndarray:
    """A float column of layer rows; missing values (``None`` in JSON, ``-1`` outliers without an MP fit) → NaN."""
    v = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
    return np.where(v < 0, np.nan, v) if key == "n_outliers" else v


def plot_layer_overview(
    results: LayerSpectra | Mapping[str, Any],
    *,
    groups: Mapping[str, str] | None = None,
    path: str | None = None,
    dpi: int = 110,
):
    """Every analysed layer on one figure: power-law tail α (± its standard error), stable rank and the number of
    Marchenko–Pastur outliers against the layer, for one model or several (one line per model).

    Args:
      results: a :class:`LayerSpectra`, or ``{model name: LayerSpectra or its .to_dict() or list of rows}``.
      groups: optional ``{model name: group}``: lines coloured by group, one legend entry per group.
      path: if given, the figure is saved there.
      dpi: resolution when saving.

    Returns:
      the matplotlib ``Figure`` (three panels sharing the layer axis, layers in the order of the first model).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> a = spectra.analyze_params({"w1": rng.standard_normal((200, 50)), "w2": rng.standard_t(3, (200, 60))})
      >>> fig = plot_layer_overview({"model a": a})
      >>> [ax.get_ylabel() for ax in fig.axes]
      ['tail α', 'stable rank Σλ/λmax', 'outliers (above MP)']
      >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    if isinstance(results, LayerSpectra):
        results = {"": results}
    if not isinstance(results, Mapping) or not results:
        raise TypeError("results must be a LayerSpectra or a non-empty {name: LayerSpectra} mapping.")
    rows = {}
    for name, res in results.items():
        if isinstance(res, LayerSpectra):
            rows[name] = [dict(r) for r in res.rows]
        elif isinstance(res, Mapping) and "layers" in res:
            rows[name] = list(res["layers"])
        elif isinstance(res, Sequence):
            rows[name] = list(res)
        else:
            raise TypeError(f"results[{name!r}] must be a LayerSpectra, its to_dict() or a list of rows.")
    dpi = check_int(dpi, "dpi", min=10)
    plt = optional_import("matplotlib.pyplot", purpose="plot_layer_overview")
    paths = sorted(dict.fromkeys(r["path"] for rs in rows.values() for r in rs), key=_natural)
    pos = {p: i for i, p in enumerate(paths)}
    width = min(16.0, max(6.0, 0.32 * len(paths) + 3.0))
    fig, axes = plt.subplots(3, 1, figsize=(width, 7.5), sharex=True)
    many = len(rows) > 10
    colors = None
    if groups is not None:
        missing = [n for n in rows if n not in groups]
        if missing:
            raise ValueError(f"groups has no group for {missing[:3]}.")
        order = list(dict.fromkeys(groups[n] for n in rows))
        colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(order)}
    seen: set = set()
    for name, rs in rows.items():
        x = np.array([pos[r["path"]] for r in rs], float)
        val = functools.partial(_column, rs)
        style = dict(marker="o", ms=3, lw=1.0, alpha=0.5 if many else 0.9, label=name or None)
        if colors is not None:
            g = groups[name]
            style.update(color=colors[g], label=None if g in seen else str(g))
            seen.add(g)
        a, s = val("alpha"), val("alpha_sigma")
        if len(rows) == 1:
            axes[0].errorbar(x, a, yerr=s, capsize=2, **style)
        else:
            axes[0].plot(x, a, **style)
        axes[1].plot(x, val("stable_rank"), **style)
        axes[2].plot(x, val("n_outliers"), **style)
    axes[0].axhspan(2.0, 6.0, color="tab:green", alpha=0.08, label="2 ≤ α ≤ 6")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("tail α")
    ticks = [re.sub(r"/(kernel|weight|w)$", "", p) for p in paths]
    ticks = [t if len(t) <= 28 else "…" + t[-27:] for t in ticks]
    axes[2].set_xticks(range(len(paths)), ticks, rotation=60, ha="right", fontsize=7 if len(paths) > 20 else 8)
    axes[2].set_xlabel("layer (pytree path, without a trailing /kernel)")
    handles, labels = axes[0].get_legend_handles_labels()
    if labels and (len(rows) <= 12 or colors is not None):
        axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[0].set_title("per-layer weight spectra", fontsize=10)
    axes[1].set_ylabel("stable rank Σλ/λmax")
    axes[2].set_ylabel("outliers (above MP)")
    from matplotlib.ticker import MaxNLocator

    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_ylim(bottom=-0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
