"""Section "ensembles": digit-classifier ensembles of several training recipes, α̂ beside the classic metrics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from .. import metrics as M
from .. import trimming as T
from ..data import RECIPES, digits_task, make_mlp, train_ensemble
from ..metrics._auroc import auroc  # jaxcompare.metrics.auroc once exported
from ..metrics._scores import logit_scores  # jaxcompare.metrics.logit_scores once exported
from ._ensemble_selection import selection_part
from ._recipes import identification_part, weight_spectra
from ._report import Report
from ._section import Section, log, pyplot

__all__ = ["ENSEMBLES"]

TASKS = ("binary", "multiclass")
COLORS = {"standard": "#3b6ea5", "label noise 20%": "#d1495b", "under-trained": "#edae49", "large lr": "#00798c"}
WIDTH, DEPTH = 64, 2


def _one_task(key: jax.Array, report: Report, task: str, size: Mapping[str, Any], out_dir: str) -> dict:
    plt = pyplot()
    x_tr, y_tr, x_te, y_te, names = digits_task(task)
    n_classes = len(names)
    binary = n_classes == 2
    module = make_mlp(n_classes, width=WIDTH, depth=DEPTH)
    counts = [("standard", size["n_ref"] + size["n_std"])] + [(r, size["n_pert"]) for r in RECIPES if r != "standard"]
    recipe_list = []
    for rname, count in counts:
        r = RECIPES[rname]
        recipe_list += [dataclasses.replace(r, steps=max(10, int(r.steps * size["steps_scale"])))] * count
    t0 = time.perf_counter()
    params = jax.block_until_ready(train_ensemble(key, module, x_tr, y_tr, n_classes, recipe_list))
    log(
        f"{task}: trained {len(recipe_list)} models ({', '.join(f'{c} {n}' for n, c in counts)}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    logits = np.asarray(jax.jit(jax.vmap(lambda p: module.apply({"params": p}, x_te)))(params))  # (K, T, C)
    recipe_of = np.array([r.name for r in recipe_list])
    k_models = logits.shape[0]
    ref_idx = np.arange(size["n_ref"])
    cand_idx = np.arange(size["n_ref"], k_models)
    score_kind = "logit_gap" if binary else "margin"
    scores = np.asarray(logit_scores(logits, y_te, score=score_kind))
    t0 = time.perf_counter()
    res = T.ensemble_alpha_hat(
        jax.random.fold_in(key, 99),
        scores,
        candidates=cand_idx,
        reference=ref_idx,
        n_boot=size["n_boot"],
    )
    alpha = np.asarray(res.alpha_hat)
    t_alpha = time.perf_counter() - t0
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    ens_label = np.asarray(M.ensemble_label(probs[ref_idx]))
    rows = []
    for j, m in enumerate(cand_idx):
        rows.append(
            dict(
                model=int(m),
                recipe=str(recipe_of[m]),
                alpha_hat=float(alpha[j]),
                alpha_hat_sd=float(np.std(np.asarray(res.boot[j]))),
                accuracy=float(M.accuracy(logits[m], y_te)),
                churn_vs_ensemble=float(M.churn(logits[m], ens_label)),
                ece=float(M.ece(probs[m], y_te)),
            )
        )
    ref_acc = [float(M.accuracy(logits[m], y_te)) for m in ref_idx]
    ens_acc = float(np.mean(ens_label == y_te))
    rows.sort(key=lambda r: -r["alpha_hat"])
    # can each statistic tell the perturbed recipes from the standard one? (AUROC, higher = better)
    is_pert = np.array([r["recipe"] != "standard" for r in rows])
    mean_ref_acc = float(np.mean(ref_acc))
    stats = {
        "alpha_hat": [r["alpha_hat"] for r in rows],
        "accuracy gap |acc - ref mean|": [abs(r["accuracy"] - mean_ref_acc) for r in rows],
        "churn vs ensemble": [r["churn_vs_ensemble"] for r in rows],
        "ECE": [r["ece"] for r in rows],
    }
    detect = {k: float(auroc(np.asarray(v), is_pert)) for k, v in stats.items()}
    title = "binary (even vs odd digits)" if binary else "10-class digits"
    report.section(
        f"α̂ against an ensemble — {title}",
        "Models trained the same way differ only through their seed. α̂ is the fraction of a model's test-score "
        "distribution that must be trimmed away before a KS test accepts it as a draw from the reference "
        f"ensemble ({size['n_ref']} standard models; bootstrap of {size['n_boot']} rounds). Candidates include more "
        "standard models and models trained with a perturbed recipe (label noise, under-training, a large learning "
        "rate). A good forensic statistic ranks perturbed models above standard ones (AUROC near 1). Score per test "
        + ("point: the logit gap l₁ − l₀." if binary else "point: the margin l_y − max_{c≠y} l_c (true class y)."),
    )
    report.text(
        f"Every model is an MLP 64 → {WIDTH} (tanh) × {DEPTH} → {n_classes} trained with Adam on softmax "
        f"cross-entropy, minibatches of {recipe_list[0].batch_size}, on {len(y_tr)} training digits; "
        f"{len(y_te)} held-out digits are the test points."
    )
    used = {r.name: r for r in recipe_list}
    report.table(
        [
            {
                "recipe": n,
                "models": c,
                "learning rate": used[n].lr,
                "steps": used[n].steps,
                "label noise": used[n].label_noise,
            }
            for n, c in counts
        ],
        caption="Training recipes (the first standard models form the reference ensemble)",
    )
    report.kpis(
        {
            "test points": len(y_te),
            "reference models": size["n_ref"],
            "candidates": len(cand_idx),
            "reference accuracy (mean)": mean_ref_acc,
            "ensemble accuracy": ens_acc,
            "KS threshold δ": float(res.threshold),
            "α̂ time (s)": t_alpha,
        }
    )
    report.table(
        [{"statistic": k, "AUROC perturbed vs standard": v} for k, v in detect.items()],
        caption="How well each statistic separates perturbed recipes from the standard one",
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, label) in zip(
        axes,
        [
            ("accuracy", "test accuracy"),
            ("churn_vs_ensemble", "churn vs ensemble label"),
            ("ece", "ECE (15 equal-width bins)"),
        ],
    ):
        for rname, c in COLORS.items():
            sel = [r for r in rows if r["recipe"] == rname]
            if sel:
                ax.errorbar(
                    [r[col] for r in sel],
                    [r["alpha_hat"] for r in sel],
                    yerr=[r["alpha_hat_sd"] for r in sel],
                    fmt="o",
                    color=c,
                    label=rname,
                    alpha=0.85,
                    ms=5,
                    capsize=2,
                    elinewidth=0.8,
                )
        ax.set_xlabel(label)
        ax.set_ylabel("α̂ (mean over bootstrap, ± sd)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="training recipe", title_fontsize=8)
    fig.suptitle(f"α̂ beside the classic metrics — {title}")
    fig.tight_layout()
    report.figure(
        fig,
        f"α̂ of each candidate against accuracy, churn and ECE ({title}); error bars: bootstrap sd.",
        out_dir=out_dir,
        name=f"alpha_{task}",
    )
    report.table(rows, caption="Every candidate, ranked by atypicality (α̂, descending)")
    top = rows[0]
    report.finding(
        f"{title}: the most atypical candidate is model {top['model']} ({top['recipe']}, α̂ = "
        f"{top['alpha_hat']:.3f} ± {top['alpha_hat_sd']:.3f}); AUROC for telling perturbed recipes from "
        "standard ones: " + ", ".join(f"{k} {v:.2f}" for k, v in detect.items()) + "."
    )
    # which recipe trained this model? the α̂ recipe classifier on the models trained above (no new training)
    identification = identification_part(
        report,
        {
            f"test-score distribution: {'logit gap' if binary else 'margin'}": scores,
            "eigenvalues of WᵀW, hidden layer 2": weight_spectra(params, "Dense_1"),
        },
        recipe_of,
        [n for n, _ in counts],
        size["n_pert"],
        title,
    )
    selection = None
    if not binary:  # α̂-guided ensembling on the same models (standard candidates + perturbed ones)
        std_pool = np.arange(size["n_ref"], size["n_ref"] + size["n_std"])
        selection = selection_part(jax.random.fold_in(key, 7), report, logits, y_te, recipe_of, std_pool, size)
    return dict(
        task=task,
        selection=selection,
        identification=identification,
        threshold=float(res.threshold),
        n_boot=size["n_boot"],
        reference_accuracy=ref_acc,
        ensemble_accuracy=ens_acc,
        candidates=rows,
        detection_auroc=detect,
        alpha_seconds=t_alpha,
        converged=bool(np.all(np.asarray(res.converged))),
    )


def run(key: jax.Array, report: Report, size: Mapping[str, Any], out_dir: str) -> dict:
    if not size["tasks"] or not set(size["tasks"]) <= set(TASKS):
        raise ValueError(f"sizes['tasks'] must be a non-empty subset of {TASKS}, got {size['tasks']!r}.")
    # a task keeps its key (its position in TASKS) when the other is left out, so its numbers do not change
    return {
        task: _one_task(jax.random.fold_in(key, i), report, task, size, out_dir)
        for i, task in enumerate(TASKS)
        if task in size["tasks"]
    }


ENSEMBLES = Section(
    "ensembles",
    run,
    cost=3.1,  # CPU seconds relative to the microscope's (--quick, measured 2026-11-29)
    # --quick leaves out the binary task: its compiled programs (training, α̂, figures) cost ~5 s of CPU (of ~60)
    quick=dict(tasks=("multiclass",), n_ref=8, n_std=4, n_pert=2, n_boot=10, steps_scale=0.25, sel_boot=10),
    full=dict(tasks=TASKS, n_ref=32, n_std=16, n_pert=4, n_boot=100, steps_scale=1.0, sel_boot=20),
)
