"""The kernel sections of the comparison report: kernel similarity (table, CKA heatmap) and kernel surrogates
(faithfulness table, attribution tables)."""

from __future__ import annotations

from typing import Any

from ._html import _e, _figure_html, _fmt, _png, _pyplot, _short, _table

__all__ = ["similarity_html", "surrogate_html"]


def _group_order(result: Any) -> list[int]:
    """Model indices with the reference group first, then the other groups in order of appearance."""
    rows = result.rows
    ref = result.settings.get("reference")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    rank = {g: (g != ref, i) for i, g in enumerate(groups)}
    return sorted(range(len(rows)), key=lambda i: (rank[rows[i]["group"]], i))


def _similarity_figure(result: Any, directory: str) -> tuple[str, str] | None:
    """``(file name, base64)`` of the CKA heatmap, models ordered by group, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    import jax.numpy as jnp
    import numpy as np

    from ..similarity import KernelSimilarity, plot_similarity

    sim = result.similarity
    order = _group_order(result)
    take = lambda key: jnp.asarray(np.asarray(sim[key], np.float64)[np.ix_(order, order)])  # noqa: E731
    names = [_short(sim["names"][i]) for i in order]
    ks = KernelSimilarity(
        take("cka"), take("p_value"), take("null_mean"), take("null_sd"), sim["kernel"], sim["label"],
        tuple(names), sim["n_permutations"], True,
    )  # fmt: skip
    m = len(names)
    size = min(11.0, max(4.5, 0.55 * m + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    plot_similarity(ks, ax=ax, annotate=m <= 12)
    fs = 8 if m <= 20 else max(4, int(160 / m))
    ax.tick_params(labelsize=fs)
    fig.tight_layout()
    return "kernel_similarity.png", _png(fig, directory, "kernel_similarity.png")


def similarity_html(result: Any, directory: str) -> list[str]:
    sim = result.similarity
    rows = sorted(result.rows, key=lambda r: r["kernel_cka"])
    b = result.bounds.get("kernel_dissimilarity")
    body = []
    for r in rows:
        flag = r["flags"].get("kernel_dissimilarity", False)
        cls = ' class="flag"' if flag else ""
        body.append(
            [f"<td>{_e(r['name'])}</td>", f"<td>{_fmt(r['group'])}</td>", f"<td{cls}>{_fmt(r['kernel_cka'])}</td>"]
            + [f"<td>{'yes' if flag else ''}</td>"]
        )
    ref = "its reference models" if result.settings.get("reference") is not None else "all other models"
    h = [
        "<h2>Kernel similarity</h2>",
        f"<p>Each model's {_e(sim['label'])} kernel is computed on the same {_e(sim['n_points'])} test points (a "
        "random subsample; indices: kernel_points in arrays.npz) and every pair of kernels is compared "
        f"by debiased CKA (unbiased HSIC), with a p-value from {_e(sim['n_permutations'])} permutations of the "
        "points (smallest possible p: "
        f"{_fmt(1 / (1 + sim['n_permutations']))}). 1 means the two models relate the test points the same way. "
        f"Mean CKA with {ref}, lowest first; a kernel is atypical when 1 − mean CKA exceeds the bound of the rule "
        + (f"(mean CKA below {_fmt(1 - b['bound'])})" if b else "")
        + ". The full CKA and p-value matrices are in results.json.</p>",
        _table(["model", "group", "mean CKA", "atypical kernel"], body),
    ]
    fig = _similarity_figure(result, directory)
    if fig is None:
        h.append("<p class=\"note\">figures need matplotlib: pip install 'jaxcompare[demo]'</p>")
    else:
        name, b64 = fig
        caption = (
            f"Debiased CKA between the models' {sim['label']} kernels (cell: CKA and permutation p-value when at "
            "most 12 models), models ordered by group, reference group first."
        )
        h.append(_figure_html(b64, caption, name))
    return h


def surrogate_html(result: Any) -> list[str]:
    sur = result.surrogate
    rows = sorted(result.rows, key=lambda r: r["surrogate_tau"])
    body = [
        [f"<td>{_e(r['name'])}</td>", f"<td>{_fmt(r['group'])}</td>"]
        + [f"<td>{_fmt(r[c])}</td>" for c in ("accuracy", "surrogate_accuracy")]
        + [f"<td>{100 * r['surrogate_tad']:+.2f}</td>"]
        + [f"<td>{_fmt(r[c])}</td>" for c in ("surrogate_tau", "surrogate_r_miss", "attribution_overlap")]
        + [f"<td>{'yes' if r['surrogate_converged'] else 'NO'}</td>"]
        for r in rows
    ]
    h = [
        "<h2>Kernel surrogates: faithfulness and attribution</h2>",
        f"<p>For each model a kernel GLM surrogate is fitted on the model's own {_e(sur['label'])} kernel between "
        f"{_e(sur['n_train'])} training points and their labels ({_e(sur['protocol'])}), and compared with the "
        f"model on {_e(sur['n_test'])} test points: TAD = surrogate − model accuracy (percentage points); τ_K = "
        "Kendall τ-b between the two models' probabilities of the true class (1: the surrogate ranks the test "
        "points as the model does); R_Miss = overlap of their error sets. Attribution overlap: the share of the "
        f"top-{_e(sur['attribution_k'])} training points behind each prediction that the model has in common "
        "with its reference models (Jaccard, mean over test points). Least faithful first.</p>",
        _table(
            [
                "model",
                "group",
                "acc.*",
                "surrogate acc.*",
                "TAD (pp)",
                "τ_K",
                "R_Miss",
                "attrib. overlap",
                "converged",
            ],
            body,
        ),  # fmt: skip
        "<p>* accuracy on the surrogate's test points. Below: the training points that contribute most to each "
        "surrogate's "
        "logit of its predicted class (W[c, i]·κ(x, x_i) + b_c/M), for the test points the models disagree on "
        "most; training points are named by their index in x_train.</p>",
    ]
    k = sur["attribution_k"]
    for n_item, item in enumerate(sur["attribution"]):
        body = []
        for m in item["models"]:
            cells = [f"<td>{_e(m['name'])}</td>", f"<td>{_e(m['prediction'])}</td>"]
            cells.append(f"<td>{_e(m['surrogate_prediction'])}</td>")
            cells += [f"<td>#{_e(t['train_index'])} y={_e(t['label'])} {t['contribution']:+.2f}</td>" for t in m["top"]]
            body.append(cells)
        votes: dict[int, int] = {}
        for m in item["models"]:
            votes[m["prediction"]] = votes.get(m["prediction"], 0) + 1
        summary = f"test point #{item['test_index']}, label {item['label']}; the models predict " + ", ".join(
            f"class {c} ({n})" for c, n in sorted(votes.items(), key=lambda cn: -cn[1])
        )
        h.append(
            f"<details{' open' if n_item == 0 else ''}><summary>{_e(summary)}</summary>"
            + _table(["model", "model predicts", "surrogate"] + [f"top {j + 1}" for j in range(k)], body, small=True)
            + "</details>"
        )
    return h
