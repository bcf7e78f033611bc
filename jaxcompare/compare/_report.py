"""The comparison report: ``index.html`` (self-contained), ``results.json``, ``models.csv`` and figures.

All text is HTML-escaped; figures are PNG files beside the page and embedded in it as base64 data URIs; tables
scroll inside a wrapper and images shrink to the page width (``max-width: 100%``), so the page reads on narrow
screens. matplotlib (``jaxcompare[demo]``) is imported only by the report modules; without it the report has no figures
and says so.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from typing import Any

from ._findings import ALL_STATISTICS, STATISTICS
from ._html import _e, _figure_html, _fmt, _png, _pyplot, _table
from ._report_kernels import similarity_html, surrogate_html

__all__ = ["write_report", "CSV_COLUMNS"]

#: Leading columns of ``models.csv`` (further columns follow when computed).
CSV_COLUMNS = (
    "checkpoint",
    "group",
    "role",
    "accuracy",
    "accuracy_gap",
    "churn",
    "ece",
    "alpha_hat",
    "alpha_hat_sd",
    "rank",
    "atypical",
)

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:anywhere}
h1{border-bottom:3px solid #3b6ea5;padding-bottom:.2em}h2{color:#3b6ea5;margin-top:1.8em;border-bottom:1px solid #ddd}
.findings{background:#f4f8fc;border-left:4px solid #3b6ea5;padding:.6em 1em;margin:1em 0}
.findings p{margin:.35em 0}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}
table{border-collapse:collapse;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;
white-space:nowrap}th{background:#eef2f7}td:first-child,th:first-child{text-align:left}
td:first-child{white-space:normal;min-width:6em;max-width:22em}table.small{font-size:.8em}
details{margin:.3em 0}summary{cursor:pointer}
td.flag{background:#fde2e1;font-weight:600}tr.atypical td:first-child{font-weight:700;color:#a33}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%;height:auto;border:1px solid #eee}
.kpi{display:inline-block;background:#eef2f7;border-radius:6px;padding:.3em .8em;margin:.2em;font-size:.92em}
pre{overflow-x:auto;background:#f7f7f7;padding:.6em;font-size:.85em}
.note{color:#a33}footer{margin-top:3em;color:#777;font-size:.85em}
"""


def _figures(result: Any, directory: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """``[(file name, base64 PNG, caption)]`` of α̂ against each classic metric, or a note without matplotlib."""
    if "alpha_hat" not in result.bounds:
        return [], None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "figures need matplotlib: pip install 'jaxcompare[demo]'"
    rows = result.rows
    groups = list(dict.fromkeys(r["group"] if r["group"] is not None else "all models" for r in rows))
    colors = plt.get_cmap("tab10")
    out = []
    for stat, label in (
        ("accuracy", "test accuracy"),
        ("churn", "churn vs the reference ensemble label"),
        ("ece", "ECE (top-label)"),
    ):
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        for gi, g in enumerate(groups):
            sel = [r for r in rows if (r["group"] if r["group"] is not None else "all models") == g]
            ax.errorbar(
                [r[stat] for r in sel],
                [r["alpha_hat"] for r in sel],
                yerr=[  # ±sd, the lower bar stopped at 0 (α̂ >= 0)
                    [min(r["alpha_hat_sd"], r["alpha_hat"]) for r in sel],
                    [r["alpha_hat_sd"] for r in sel],
                ],
                fmt="o",
                color=colors(gi % 10),
                ecolor="#999",
                elinewidth=0.8,
                capsize=2,
                label=g + (" (reference)" if g == result.settings["reference"] else ""),
            )
            for r in sel:
                if r["atypical"]:
                    ax.annotate(
                        r["name"], (r[stat], r["alpha_hat"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
        ax.axhline(result.bounds["alpha_hat"]["bound"], color="#a33", ls="--", lw=1, label="atypical bound")
        ax.margins(x=0.1, y=0.08)  # room for the labels of the atypical models
        ax.set_xlabel(label)
        ax.set_ylabel("α̂ (mean over bootstrap rounds; bars: sd)")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        name = f"alpha_vs_{stat}.png"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(buf.getvalue())
        caption = (
            f"α̂ against {label}, one point per model, coloured by group; the dashed line is the bound above "
            "which a model is called atypical."
        )
        out.append((name, base64.b64encode(buf.getvalue()).decode("ascii"), caption))
    return out, None


def _spectra_figure(result: Any, directory: str) -> tuple[str, str] | None:
    """``(file name, base64)`` of the per-layer overview of every model, or None without matplotlib."""
    if _pyplot() is None:
        return None
    from ..spectra._layer_plots import plot_layer_overview

    groups = {r["name"]: r["group"] if r["group"] is not None else "all models" for r in result.rows}
    spectra = {n: v for n, v in result.spectra.items() if n in groups}
    fig = plot_layer_overview(spectra, groups=groups)
    return "spectra_overview.png", _png(fig, directory, "spectra_overview.png")


def _models_table(result: Any) -> str:
    rows = list(result.rows)
    if "alpha_hat" in result.bounds:
        rows.sort(key=lambda r: r["rank"])
    cols = ["name", "group", "role", "accuracy", "accuracy_gap", "churn", "ece"]
    cols += [
        c
        for c in (
            "alpha_hat",
            "alpha_hat_sd",
            "rank",
            "train_accuracy",
            "generalization_gap",
            "kernel_cka",
            "surrogate_tau",
            "spectral_outliers",
            "tail_alpha_mean",
        )
        if any(c in r for r in rows)
    ]
    body, classes = [], []
    for r in rows:
        cells = []
        for c in cols:
            flag = r["flags"].get("kernel_dissimilarity" if c == "kernel_cka" else c, False)
            cells.append(f'<td class="flag">{_fmt(r.get(c))}</td>' if flag else f"<td>{_fmt(r.get(c))}</td>")
        body.append(cells)
        classes.append("atypical" if r["atypical"] else "")
    names = {
        **STATISTICS,
        "alpha_hat_sd": "α̂ sd",
        "rank": "rank (α̂)",
        "kernel_cka": "kernel CKA",
        "surrogate_tau": "τ_K",
    }
    header = [names.get(c, c.replace("_", " ")) for c in cols]
    return _table(header, body, classes)


def _spectra_html(spectra: dict) -> str:
    parts = []
    keys = (
        "path",
        "shape",
        "n",
        "m",
        "lambda_max",
        "stable_rank",
        "mp_edge",
        "n_outliers",
        "alpha",
        "xmin",
        "ks",
        "alpha_sigma",
        "n_tail",
        "note",
    )
    for name, res in spectra.items():
        layers = res.get("layers", []) if isinstance(res, dict) else []
        cols = [k for k in keys if any(k in lay for lay in layers)]
        body = [[f"<td>{_fmt(lay.get(k)) if k != 'shape' else _e(lay.get(k))}</td>" for k in cols] for lay in layers]
        n_layers = f"{len(layers)} layer{'' if len(layers) == 1 else 's'}"
        parts.append(f"<details><summary>{_e(name)} ({n_layers})</summary>{_table(cols, body)}</details>")
    return "".join(parts)


def write_report(result: Any, directory: str | os.PathLike) -> str:
    """Write ``index.html``, ``results.json``, ``models.csv`` and ``alpha_vs_*.png`` for a comparison result.

    Args:
      result: a :class:`ComparisonResult`.
      directory: output directory (created).

    Returns:
      The path of ``index.html``.
    """
    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    data = result.to_dict()
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(data, f, indent=1, allow_nan=False)
    table = result.table()
    extra = [c for c in table[0] if c not in ("name",) + CSV_COLUMNS]
    with open(os.path.join(d, "models.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(CSV_COLUMNS) + extra)
        for r in table:
            vals = [r["name"]] + [r.get(c) for c in CSV_COLUMNS[1:] + tuple(extra)]
            w.writerow(["" if v is None else v for v in vals])
    figs, fig_note = _figures(result, d)
    s = result.settings
    kpis = {
        "models": s["n_models"],
        "test points": s["n_test"],
        "classes": s["n_classes"],
        "reference": s["reference"] if s["reference"] is not None else "leave-one-out",
        "score": s["score"],
        "bootstrap rounds": s["n_boot"],
        "KS threshold δ": s.get("threshold"),
    }
    h = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>jaxcompare: comparison of {s['n_models']} models</title><style>{_CSS}</style></head><body>",
        f"<h1>Comparison of {s['n_models']} models</h1>",
        '<section class="findings"><h2 style="margin-top:0">Findings</h2>'
        + "".join(f"<p>{_e(t)}</p>" for t in result.findings)
        + "</section>",
        "<div>" + "".join(f'<span class="kpi">{_e(k)}: <b>{_fmt(v)}</b></span>' for k, v in kpis.items()) + "</div>",
        "<h2>Models</h2>",
        f"<p>Score α̂ compares: {_e(s['score'])} — {_e(s['score_definition'])}. ECE: {_e(s['ece'])}, "
        f"{_e(s['n_bins'])} bins. Churn is measured against the reference ensemble's label (argmax of the mean "
        "probabilities of the reference models; for a reference model, of the other reference models). Highlighted "
        "cells exceed the bound of the rule below; highlighted names are atypical (flagged on α̂). "
        + ("α̂ protocol: " + _e(s["alpha_protocol"]) + "." if s.get("alpha_protocol") else "")
        + "</p>",
        _models_table(result),
    ]
    if result.bounds:
        body = [
            [f"<td>{_e(ALL_STATISTICS[k])}</td>"]
            + [f"<td>{_fmt(b[c])}</td>" for c in ("median", "scale", "bound", "n_reference")]
            for k, b in result.bounds.items()
        ]
        h += [
            "<h2>The rule</h2>",
            "<p>A model is flagged on a statistic when its value exceeds the bound: with groups, the larger of the "
            "reference models' own (leave-one-out) maximum and their median + 3 robust standard deviations "
            "(1.4826·MAD, at least one test point 1/T); without groups, the median + 3 robust sd of all models. "
            "For α̂, α̂ − 2·sd/√B must exceed the bound (the Monte Carlo error of the bootstrap mean). For the "
            "kernel dissimilarity (1 − mean CKA) the robust sd is at least the median permutation-null sd of the "
            "CKA (differences unrelated points produce are not called).</p>",
            _table(["statistic", "reference median", "robust sd", "bound", "reference values"], body),
        ]
    if result.detection:
        groups = list(dict.fromkeys(x["group"] for x in result.detection))
        stats = list(dict.fromkeys(x["statistic"] for x in result.detection))
        look = {(x["group"], x["statistic"]): x["auroc"] for x in result.detection}
        body = [[f"<td>{_e(g)}</td>"] + [f"<td>{_fmt(look.get((g, st)))}</td>" for st in stats] for g in groups]
        h += [
            "<h2>Telling each group from the reference (AUROC)</h2>",
            "<p>Probability that a model of the group scores higher on the statistic than a reference model (1 = "
            "perfect separation, 0.5 = chance).</p>",
            _table(["group"] + [ALL_STATISTICS[st] for st in stats], body),
        ]
    if figs or fig_note:
        h.append("<h2>α̂ against the classic metrics</h2>")
        if fig_note:
            h.append(f'<p class="note">{_e(fig_note)}</p>')
        for name, b64, caption in figs:
            h.append(_figure_html(b64, caption, name))
    if result.similarity:
        h += similarity_html(result, d)
    if result.surrogate:
        h += surrogate_html(result)
    if result.spectra:
        h += [
            "<h2>Per-layer weight spectra</h2>",
            "<p>Eigenvalues of WᵀW/N per weight matrix (jaxcompare.spectra.analyze_params): largest eigenvalue, "
            "stable rank, Marchenko–Pastur bulk edge, outliers above it, power-law tail exponent α. The histograms "
            "of one checkpoint's eigenvalues with their fits, one figure per layer group: jaxcompare spectra "
            "--checkpoint PATH --out DIR.</p>",
        ]
        opts = result.settings.get("spectra_options")
        if opts:
            shown = ", ".join(f"{k}={v}" for k, v in opts.items() if k in ("conv", "heads", "stacked"))
            h.append(f"<p>Layouts read as: {_e(shown)} (options of analyze_params; compare_models' spectra_options, "
                     "jaxcompare compare --conv/--heads/--stacked).</p>")  # fmt: skip
        for text in result.settings.get("spectra_warnings") or ():
            h.append(f'<p class="note">{_e(text)}</p>')
        fig = _spectra_figure(result, d)
        if fig is not None:
            name, b64 = fig
            caption = (
                "Every model's layers: power-law tail exponent α, stable rank and the number of eigenvalues above "
                "the Marchenko–Pastur edge, one line per model, coloured by group (the shaded band: 2 ≤ α ≤ 6)."
            )
            h.append(_figure_html(b64, caption, name))
        h.append(_spectra_html(result.spectra))
    for section, why in result.skipped.items():
        h.append(f'<p class="note">Section {_e(section)} skipped: {_e(why)}</p>')
    h += [
        "<h2>Settings</h2>",
        f"<details><summary>every setting (also in results.json)</summary><pre>"
        f"{_e(json.dumps(data['settings'], indent=1))}</pre></details>",
        "<footer>Written by jaxcompare (compare). Numbers: results.json; table: models.csv.</footer></body></html>",
    ]
    path = os.path.join(d, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(h))
    return path
