"""The main job: a complete model-comparison study on built-in data, written as an HTML report + results.json.

Sections: (1) ensembles on digits, α̂ vs the classic metrics; (2) kernel surrogates of one model with attribution;
(3) linear-width spectra under four optimizers; (4) the embedding microscope. Every number lands in results.json.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics as M
from .. import trimming as T
from ._ensemble import RECIPES, digits_task, make_mlp, train_ensemble
from ._report import Report

__all__ = ["run_study", "SIZES"]

SIZES = {
    # quick: for tests and a first look (about a minute); full: the demo (a few minutes on 2 cores)
    "quick": dict(n_ref=8, n_std=4, n_pert=2, n_boot=10, steps_scale=0.25, surrogate_train=200, surrogate_test=100,
                  projection_dim=256, lwr=(120, 60, 90), lwr_steps=20, micro_n=200),
    "full": dict(n_ref=32, n_std=16, n_pert=4, n_boot=100, steps_scale=1.0, surrogate_train=1000, surrogate_test=500,
                 projection_dim=2048, lwr=(600, 300, 450), lwr_steps=150, micro_n=1000),
}


def _log(msg: str) -> None:
    import sys

    sys.stderr.write(f"[jaxcompare demo] {msg}\n")
    sys.stderr.flush()


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count 1/2): the Mann–Whitney AUROC."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _scores(logits: np.ndarray, y: np.ndarray, binary: bool) -> np.ndarray:
    """Scalar soft decision per model and point: logit gap (binary) or correct-class margin (multiclass)."""
    if binary:
        return logits[..., 1] - logits[..., 0]
    correct = np.take_along_axis(logits, y[None, :, None], axis=-1)[..., 0]
    other = np.where(np.arange(logits.shape[-1])[None, None, :] == y[None, :, None], -np.inf, logits).max(-1)
    return correct - other


def section_ensembles(report: Report, key: jax.Array, task: str, size: dict, out_dir: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_tr, y_tr, x_te, y_te, names = digits_task(task)
    n_classes = len(names)
    binary = n_classes == 2
    module = make_mlp(n_classes)
    counts = [("standard", size["n_ref"] + size["n_std"])] + [(r, size["n_pert"]) for r in RECIPES if r != "standard"]
    recipe_list = []
    for rname, count in counts:
        r = RECIPES[rname]
        recipe_list += [dataclasses.replace(r, steps=max(10, int(r.steps * size["steps_scale"])))] * count
    t0 = time.perf_counter()
    params = jax.block_until_ready(train_ensemble(key, module, x_tr, y_tr, n_classes, recipe_list))
    recipe_of = [r.name for r in recipe_list]
    _log(f"{task}: trained {len(recipe_list)} models ({', '.join(f'{c} {n}' for n, c in counts)}) "
         f"in {time.perf_counter() - t0:.1f}s")
    logits = np.asarray(jax.jit(jax.vmap(lambda p: module.apply({"params": p}, x_te)))(params))  # (K, T, C)
    recipe_of = np.array(recipe_of)
    k_models = logits.shape[0]
    ref_idx = np.arange(size["n_ref"])
    cand_idx = np.arange(size["n_ref"], k_models)
    scores = _scores(logits, y_te, binary)
    t0 = time.perf_counter()
    res = T.ensemble_alpha_hat(scores, key=jax.random.fold_in(key, 99), candidates=cand_idx, reference=ref_idx,
                               n_boot=size["n_boot"])
    alpha = np.asarray(res.alpha_hat)
    t_alpha = time.perf_counter() - t0
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    ens_label = np.asarray(M.ensemble_label(probs[ref_idx]))
    rows = []
    for j, m in enumerate(cand_idx):
        rows.append(dict(model=int(m), recipe=str(recipe_of[m]), alpha_hat=float(alpha[j]),
                         alpha_hat_sd=float(np.std(np.asarray(res.boot[j]))),
                         accuracy=float(M.accuracy(logits[m], y_te)),
                         churn_vs_ensemble=float(M.churn(logits[m], ens_label)),
                         ece=float(M.ece(probs[m], y_te))))
    ref_acc = [float(M.accuracy(logits[m], y_te)) for m in ref_idx]
    ens_acc = float(np.mean(ens_label == y_te))
    rows.sort(key=lambda r: -r["alpha_hat"])
    # can each statistic tell the perturbed recipes from the standard one? (AUROC, higher = better)
    is_pert = np.array([r["recipe"] != "standard" for r in rows])
    mean_ref_acc = float(np.mean(ref_acc))
    detect = {
        "alpha_hat": _auroc(np.array([r["alpha_hat"] for r in rows]), is_pert),
        "accuracy gap |acc - ref mean|": _auroc(np.array([abs(r["accuracy"] - mean_ref_acc) for r in rows]), is_pert),
        "churn vs ensemble": _auroc(np.array([r["churn_vs_ensemble"] for r in rows]), is_pert),
        "ECE": _auroc(np.array([r["ece"] for r in rows]), is_pert),
    }
    title = "binary (even vs odd digits)" if binary else "10-class digits"
    report.section(
        f"α̂ against an ensemble — {title}",
        "Models trained the same way differ only through their seed. α̂ is the fraction of a model's test-score "
        "distribution that must be trimmed away before a KS test accepts it as a draw from the reference "
        f"ensemble ({size['n_ref']} standard models; bootstrap of {size['n_boot']} rounds). Candidates include more "
        "standard models and models trained with a perturbed recipe (label noise, under-training, a large learning "
        "rate). A good forensic statistic ranks perturbed models above standard ones (AUROC near 1).",
    )
    report.kpis({"test points": len(y_te), "reference models": size["n_ref"], "candidates": len(cand_idx),
                 "reference accuracy (mean)": mean_ref_acc, "ensemble accuracy": ens_acc,
                 "KS threshold δ": float(res.threshold), "α̂ time (s)": t_alpha})
    report.table([{"statistic": k, "AUROC perturbed vs standard": v} for k, v in detect.items()],
                 caption="How well each statistic separates perturbed recipes from the standard one")
    colors = {"standard": "#3b6ea5", "label noise 20%": "#d1495b", "under-trained": "#edae49", "large lr": "#00798c"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, label) in zip(axes, [("accuracy", "test accuracy"), ("churn_vs_ensemble", "churn vs ensemble label"),
                                       ("ece", "ECE (15 equal-width bins)")]):
        for rname, c in colors.items():
            sel = [r for r in rows if r["recipe"] == rname]
            if sel:
                ax.errorbar([r[col] for r in sel], [r["alpha_hat"] for r in sel],
                            yerr=[r["alpha_hat_sd"] for r in sel], fmt="o", color=c, label=rname, alpha=0.85,
                            ms=5, capsize=2, elinewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("α̂ (mean over bootstrap, ± sd)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="training recipe", title_fontsize=8)
    fig.suptitle(f"α̂ beside the classic metrics — {title}")
    fig.tight_layout()
    report.figure(fig, f"α̂ of each candidate against accuracy, churn and ECE ({title}); error bars: bootstrap sd.",
                  out_dir=out_dir, name=f"alpha_{task}")
    report.table(rows, caption="Candidates ranked by atypicality (α̂, descending)", max_rows=12)
    return dict(task=task, threshold=float(res.threshold), n_boot=size["n_boot"], reference_accuracy=ref_acc,
                ensemble_accuracy=ens_acc, candidates=rows, detection_auroc=detect, alpha_seconds=t_alpha,
                converged=bool(np.all(np.asarray(res.converged))))


SECTIONS = ["ensembles", "surrogates", "lwr", "microscope"]


def run_study(out_dir: str = "report", *, quick: bool = False, seed: int = 0, sections: list[str] | None = None) -> str:
    """Run the whole study and write ``out_dir/index.html`` and ``out_dir/results.json``; returns the HTML path."""
    size = SIZES["quick" if quick else "full"]
    key = jax.random.key(seed)
    report = Report("jaxcompare — a model-comparison study on digits")
    report.text("Built-in data only (scikit-learn's bundled digits and generated data); every number on this page "
                "is in <code>results.json</code>. Generated by <code>jaxcompare demo"
                + (" --quick" if quick else "") + f"</code> with seed {seed}.")
    t_start = time.perf_counter()
    todo = sections or SECTIONS
    timings = {}
    for name in todo:
        t0 = time.perf_counter()
        _log(f"section: {name}")
        k = jax.random.fold_in(key, SECTIONS.index(name))
        if name == "ensembles":
            report.results["ensembles"] = {
                task: section_ensembles(report, jax.random.fold_in(k, i), task, size, out_dir)
                for i, task in enumerate(["binary", "multiclass"])
            }
        elif name == "surrogates":
            from ._study_more import section_surrogates

            report.results["surrogates"] = section_surrogates(report, k, size, out_dir)
        elif name == "lwr":
            from ._study_more import section_lwr

            report.results["lwr"] = section_lwr(report, k, size, out_dir)
        elif name == "microscope":
            from ._study_more import section_microscope

            report.results["microscope"] = section_microscope(report, k, size, out_dir)
        timings[name] = time.perf_counter() - t0
        _log(f"section {name} done in {timings[name]:.1f}s")
    report.results["timings_seconds"] = {**timings, "total": time.perf_counter() - t_start}
    report.results["config"] = dict(quick=quick, seed=seed, sizes=size, jax=jax.__version__,
                                    devices=[str(d) for d in jax.devices()])
    return report.write(out_dir, footer=f"jaxcompare {__import__('jaxcompare').__version__} · jax {jax.__version__} · "
                        f"total {time.perf_counter() - t_start:.0f}s")
