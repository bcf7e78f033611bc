"""Section "recipes": which optimizer trained this network? α̂ against recipe pools, on held-out seeds.

Also the part of section "ensembles" that asks the same question of the digit classifiers trained there with
different recipes (:func:`crossval_identification`, :func:`identification_part`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import trimming as T
from ._report import Report
from ._section import Section, log, pyplot

__all__ = [
    "RECIPES_SECTION",
    "OPTIMIZERS",
    "simulate_recipes",
    "weight_spectra",
    "crossval_identification",
    "identification_part",
]

#: the four optimizers of the lwr section (learning rate of GD per training point: η = 0.2 n)
OPTIMIZERS = {
    "GD": dict(optimizer="gd", lr_per_n=0.2),
    "SGD small step": dict(optimizer="sgd", lr=1.0, batch_size=32),
    "SGD large step": dict(optimizer="sgd", lr=150.0, batch_size=32, steps=50),
    "Adam": dict(optimizer="adam", lr=0.3, batch_size=32),
}
FEATURES = {"weights": "weights WᵀW/h", "ck": "conjugate kernel", "ntk": "NTK"}
RULE_CLASS = {  # the hand-set rule's verdicts, as the recipes they point to
    "heavy tails: adaptive optimizer (Adam-like)": "Adam",
    "aligned spike: large-step (S)GD": "SGD large step",
    "bulk unchanged: GD or small-step SGD": "GD or SGD small step",
    "outliers without alignment": "outliers without alignment",
}


def _identification_row(feature_column: str, label: str, threshold, rep, t0: float) -> dict:
    """One row of an identification-accuracy table (the report's and the benchmark's)."""
    return {
        feature_column: label,
        "threshold": "DKW (level 0.01)" if threshold is None else "pool (leave-one-out)",
        "identified": f"{int(np.trace(rep.confusion))}/{int(rep.confusion.sum())}",
        "accuracy": rep.accuracy,
        "time (s)": time.perf_counter() - t0,
    }


def simulate_recipes(cfg: Any, n_seeds: int, steps: int) -> dict[str, dict[str, np.ndarray]]:
    """Train the linear-width model with each optimizer of :data:`OPTIMIZERS` for seeds ``0..n_seeds-1`` (seed
    ``s`` draws the data, the initialization and the minibatches: ``split(key(s), 3)``), one compiled program per
    optimizer. Returns per optimizer the eigenvalues after training (``weights``, ``ck``, ``ntk``: ``(S, ·)``), those
    of the weights at initialization (``init``), the top alignment with the teacher (``align``) and result codes."""
    from .. import lwr

    out = {}
    for name, spec in OPTIMIZERS.items():
        kw = dict(spec)
        if "lr_per_n" in kw:
            kw["lr"] = kw.pop("lr_per_n") * cfg.n
        kw["steps"] = min(kw.get("steps", steps), steps)

        def one(seed, kw=kw):
            kd, kp, kt = jax.random.split(jax.random.key(seed), 3)
            data = lwr.sample_data(kd, cfg)
            res = lwr.train(
                kt, lwr.init_params(kp, cfg), data, cfg, throw=False, progress_bar=False, eig_backend="jax", **kw
            )
            h = res.history
            return dict(
                weights=h.eig_weights[-1],
                ck=h.eig_ck[-1],
                ntk=h.eig_ntk[-1],
                init=h.eig_weights[0],
                align=jnp.max(h.align[-1], axis=-1)[0],
                result=res.result,
            )

        t0 = time.perf_counter()
        # one compiled program per optimizer, called seed by seed: a vmap over seeds can wedge XLA's CPU thread
        # pool (a hang seen once in this section; PyAutoLabs/PyAutoFit#1530), and on a few cores it is not faster
        run_one = jax.jit(one)
        runs = [jax.tree_util.tree_map(np.asarray, run_one(jnp.asarray(s))) for s in range(n_seeds)]
        out[name] = {k: np.stack([r[k] for r in runs]) for k in runs[0]}
        log(f"recipes: {name}, {n_seeds} seeds in {time.perf_counter() - t0:.1f}s")
    return out


def _rule_confusion(sims: Mapping[str, Any], held: range) -> tuple[dict, int]:
    from ..lwr._diagnosis import spectral_diagnosis

    cols = list(dict.fromkeys(RULE_CLASS.values()))
    conf = {k: dict.fromkeys(cols, 0) for k in sims}
    correct = 0
    for name, v in sims.items():
        for s in held:
            verdict = spectral_diagnosis(v["init"][s], v["weights"][s], float(min(v["align"][s], 1.0))).verdict
            conf[name][RULE_CLASS[verdict]] += 1
        right = "GD or SGD small step" if name in ("GD", "SGD small step") else name
        correct += conf[name][right]
    return conf, correct


def weight_spectra(params: Mapping[str, Any], layer: str) -> np.ndarray:
    """``(K, min(n_in, n_out))`` eigenvalues of ``WᵀW`` (the squared singular values of ``W``, descending) of the
    ``(n_in, n_out)`` kernel of flax layer ``layer``, for each of the ``K`` models stacked on the leading axis of
    ``params`` (as :func:`jaxcompare.data.train_ensemble` returns them).

    Example:
      >>> w = np.zeros((2, 3, 2)); w[0, 0, 0], w[0, 1, 1], w[1, 2, 0] = 2.0, 1.0, 3.0
      >>> weight_spectra({"Dense_0": {"kernel": w}}, "Dense_0").tolist()
      [[4.0, 1.0], [9.0, 0.0]]
    """
    if layer not in params or "kernel" not in params[layer]:
        raise ValueError(f"params has no layer {layer!r} with a kernel; layers: {sorted(params)}.")
    w = np.asarray(params[layer]["kernel"], np.float64)
    if w.ndim != 3 or min(w.shape) == 0:
        raise ValueError(f"params[{layer!r}]['kernel'] must be (K, n_in, n_out) stacked over models, got {w.shape}.")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"params[{layer!r}]['kernel'] must be finite (a diverged model?), found NaN or inf.")
    return np.linalg.svd(w, compute_uv=False) ** 2


def crossval_identification(
    values: Any, recipe_of: Any, recipes: Sequence[str], per_recipe: int, *, threshold: Any = None
) -> T.IdentificationReport:
    """Two-fold recipe identification over seeds: every model identified once, by pools that do not contain it.

    The first ``per_recipe`` models of each recipe (in row order; ``2r`` of them are used, ``r = per_recipe // 2``)
    are cut into halves A and B of ``r`` models. Pools from A identify the models of B (``evaluate_identification``:
    α̂ as the distance, DKW or ``"pool"`` threshold), then pools from B identify A; the confusion matrices add up.
    Every recipe has the same pool size and the same number of held-out models, so no recipe is favoured by a
    larger pool (the ``"pool"`` threshold grows with the pool) and the accuracy is balanced by construction.

    Args:
      values: ``(K, m)`` values per model (e.g. test-score distributions or weight spectra; unaligned).
      recipe_of: ``(K,)`` the recipe name of each model.
      recipes: the recipes to tell apart (the order of the confusion matrix); each needs ``per_recipe`` models.
      per_recipe: models used per recipe (``>= 2``; an odd last one is left out).
      threshold: ``None`` (DKW), ``"pool"`` (needs ``per_recipe >= 4``) or a number, as in ``identify_recipe``.

    Returns:
      ``IdentificationReport``; ``predicted[r]`` and ``alpha[r]`` follow the order of the ``2r`` models of recipe
      ``r`` (half A first).

    Example (four recipes of known, clearly different laws; 4 models each):
      >>> rng = np.random.default_rng(0)
      >>> law = {"a": (0, 1), "b": (2, 1), "c": (0, 4), "d": (5, 1)}
      >>> names = np.repeat(list(law), 4)
      >>> vals = np.stack([rng.normal(*law[r], 200) for r in names])
      >>> crossval_identification(vals, names, list(law), 4).confusion.tolist()
      [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 4]]
    """
    v = np.asarray(values)
    names = np.asarray(recipe_of)
    if v.ndim != 2 or names.shape != (v.shape[0],):
        raise ValueError(f"values must be (K, m) and recipe_of (K,), got values {v.shape} and recipe_of {names.shape}.")
    recipes = tuple(recipes)
    if len(recipes) < 2 or len(set(recipes)) != len(recipes):
        raise ValueError(f"recipes must hold at least 2 distinct names, got {list(recipes)}.")
    if isinstance(per_recipe, bool) or not isinstance(per_recipe, (int, np.integer)) or per_recipe < 2:
        raise ValueError(f"per_recipe must be an integer >= 2 (one model per half), got {per_recipe!r}.")
    idx = {r: np.flatnonzero(names == r)[:per_recipe] for r in recipes}
    short = {r: len(i) for r, i in idx.items() if len(i) < per_recipe}
    if short:
        raise ValueError(f"every recipe needs per_recipe={per_recipe} models; these have fewer: {short}.")
    half = per_recipe // 2
    folds = ({r: i[:half] for r, i in idx.items()}, {r: i[half : 2 * half] for r, i in idx.items()})
    conf = np.zeros((len(recipes), len(recipes)), np.int64)
    predicted: dict[str, list] = {r: [] for r in recipes}
    alpha: dict[str, list] = {r: [] for r in recipes}
    for pool, held in ((folds[1], folds[0]), (folds[0], folds[1])):  # half A identified first
        rep = T.evaluate_identification(
            {r: v[i] for r, i in held.items()}, {r: v[i] for r, i in pool.items()}, threshold=threshold
        )
        conf += rep.confusion
        for r in recipes:
            predicted[r].append(rep.predicted[r])
            alpha[r].append(rep.alpha[r])
    return T.IdentificationReport(
        recipes=recipes,
        confusion=conf,
        accuracy=float(np.trace(conf) / conf.sum()),
        predicted={r: np.concatenate(p) for r, p in predicted.items()},
        alpha={r: np.concatenate(a) for r, a in alpha.items()},
    )


def identification_part(
    report: Report, features: Mapping[str, Any], recipe_of: Any, recipes: Sequence[str], per_recipe: int, title: str
) -> dict:
    """Part of section "ensembles": which recipe trained this digit classifier? :func:`crossval_identification` on
    each feature (``features``: label → ``(K, m)`` values), with the DKW threshold and, when the pools hold at least
    2 models, the pool's own; a table of accuracies and the confusion matrix of the first feature (DKW)."""
    half = per_recipe // 2
    ths = (None, "pool") if half >= 2 else (None,)
    rows, reps = [], {}
    for label, vals in features.items():
        for th in ths:
            t0 = time.perf_counter()
            rep = crossval_identification(vals, recipe_of, recipes, per_recipe, threshold=th)
            reps[(label, th)] = rep
            rows.append(_identification_row("feature (per model)", label, th, rep, t0))
    first = next(iter(features))
    main = reps[(first, None)]
    log(f"ensembles: recipe identification ({title}) in {sum(r['time (s)'] for r in rows):.1f}s")
    report.text(
        f"Which recipe trained this model? The same α̂ recipe classifier as in the section on the simulator's "
        f"optimizers (`evaluate_identification`), here on the digit classifiers above, trained with {len(recipes)} "
        f"different recipes. The first {2 * half} models of each recipe (one training seed each) are cut into two "
        f"halves of {half} model{'s' if half > 1 else ''}: the pools of one half identify every model of the other "
        "half, then the halves swap, "
        f"so each of the {len(recipes) * 2 * half} models is identified once by pools that do not contain it (equal "
        "pool sizes, so no recipe is favoured). Features, compared as sets of values (a distribution of test "
        f"scores ignores which test point gave which score): {'; '.join(features)}. "
        + ("" if half >= 2 else "The pool threshold needs pools of at least 2 models (the full run has them).")
    )
    report.table(rows, caption=f"Which recipe trained this model? Identification accuracy, {title}")
    report.table(
        [
            {"true recipe": r, **{f"→ {c}": int(x) for c, x in zip(recipes, row)}}
            for r, row in zip(recipes, main.confusion)
        ],
        caption=f"Confusion matrix, {title}: {first}, DKW threshold (rows: true recipe)",
    )
    best = max(rows, key=lambda r: r["accuracy"])
    report.finding(
        f"Which recipe trained this digit classifier? {title}: α̂ against recipe pools identifies "
        f"{rows[0]['identified']} held-out models from their {first} (DKW); best: {best['identified']} "
        f"({best['feature (per model)']}, {best['threshold']})."
    )
    return dict(
        recipes=list(recipes),
        pool_size=half,
        identified_models=int(main.confusion.sum()),
        accuracy={f"{f}/{th or 'dkw'}": r.accuracy for (f, th), r in reps.items()},
        confusion={f"{f}/{th or 'dkw'}": r.confusion for (f, th), r in reps.items()},
        table=rows,
    )


def run(key: jax.Array, report: Report, size: Mapping[str, Any], out_dir: str) -> dict:
    from .. import lwr

    del key  # seeds are the simulator's own (seed s ↦ key(s)), so pools and held-out runs are reproducible alone
    plt = pyplot()
    n, d, h = size["rec_size"]
    n_pool, n_held, steps = size["rec_pool"], size["rec_held"], size["rec_steps"]
    cfg = lwr.LWRConfig(n=n, d=d, h=h)
    sims = simulate_recipes(cfg, n_pool + n_held, steps)
    failed = {k: int(np.sum(v["result"] != 0)) for k, v in sims.items()}
    names = tuple(sims)
    rows, reports = [], {}
    for feat, label in FEATURES.items():
        for th in (None, "pool"):
            t0 = time.perf_counter()
            rep = T.evaluate_identification(
                {k: v[feat][n_pool:] for k, v in sims.items()},
                {k: v[feat][:n_pool] for k, v in sims.items()},
                threshold=th,
            )
            reports[(feat, th)] = rep
            rows.append(_identification_row("feature (eigenvalues after training)", label, th, rep, t0))
    conf_rule, correct_rule = _rule_confusion(sims, range(n_pool, n_pool + n_held))
    total = len(names) * n_held
    rows.append(
        {
            "feature (eigenvalues after training)": "hand-set rule (lwr.spectral_diagnosis), weights",
            "threshold": "stated thresholds, 3 classes",
            "identified": f"{correct_rule}/{total}",
            "accuracy": correct_rule / total,
            "time (s)": float("nan"),
        }
    )
    main = reports[("weights", None)]
    alpha_main = np.concatenate([np.asarray(main.alpha[r]) for r in names])  # (held-out networks, K)
    tie_broken = int(np.sum(np.sum(alpha_main == alpha_main.min(axis=1, keepdims=True), axis=1) > 1))
    report.section(
        f"Which optimizer trained this network? α̂ against recipe pools (n={n}, d={d}, h={h})",
        "The linear-width model of the lwr section trained by its four optimizers, each with seeds "
        f"0..{n_pool + n_held - 1} (a seed draws new data, initialization and minibatches; these seeds are the "
        f"simulator's own and do not follow the report's seed). Seeds 0..{n_pool - 1} of "
        f"each optimizer form its reference pool; seeds {n_pool}..{n_pool + n_held - 1} are held out. A held-out "
        "network is assigned to the optimizer whose pool it is least atypical of: α̂ (the fraction of its eigenvalues "
        "that must be trimmed before a KS test accepts them as drawn from the pool's pooled eigenvalues) is the "
        "distance; when several pools give the same α̂ (often 0: the network lies within the threshold of each), the "
        "smaller untrimmed KS distance decides (`identify_recipe`). No threshold is tuned: the KS "
        "threshold is the DKW bound at level 0.01 or the pool's own leave-one-out spread. This replaces the "
        "hand-set thresholds of `lwr.spectral_diagnosis`, shown in the last row on the same held-out runs only as "
        "the baseline it replaces (it cannot tell GD from small-step SGD, so it is scored on 3 classes).",
    )
    report.kpis(
        {
            "accuracy (weights, DKW)": main.accuracy,
            "held-out networks": int(main.confusion.sum()),
            "decided by the KS tie-break": tie_broken,
            "pool size per optimizer": n_pool,
            "training steps": steps,
            "failed runs": sum(failed.values()),
        }
    )
    report.table(rows, caption="Identification accuracy on the held-out seeds")
    report.table(
        [
            {"true optimizer": r, **{f"→ {c}": int(v) for c, v in zip(names, row)}}
            for r, row in zip(names, main.confusion)
        ],
        caption="Confusion matrix, weights' eigenvalues, DKW threshold (rows: true optimizer)",
    )
    report.table(
        [{"true optimizer": r, **{f"→ {c}": v for c, v in conf_rule[r].items()}} for r in names],
        caption="The hand-set rule on the same held-out runs (its verdicts as optimizer classes)",
    )
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for i, r in enumerate(names):
        a = np.asarray(main.alpha[r])  # (held, K)
        for j in range(len(names)):
            ax.scatter(
                np.full(a.shape[0], i) + (j - 1.5) * 0.18,
                a[:, j],
                s=18,
                color=f"C{j}",
                label=f"pool: {names[j]}" if i == 0 else None,
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("true optimizer of the held-out network")
    ax.set_ylabel("α̂ against each pool")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    report.figure(
        fig,
        "α̂ of every held-out network (weights' eigenvalues, DKW threshold) against each optimizer's pool; the "
        "identified optimizer is the pool with the smallest α̂.",
        out_dir=out_dir,
        name="recipes_alpha",
    )
    report.finding(
        f"Which optimizer? α̂ against recipe pools identifies {int(np.trace(main.confusion))}/"
        f"{int(main.confusion.sum())} held-out networks ({main.accuracy:.0%}, weights' eigenvalues); the hand-set "
        f"rule gets {correct_rule}/{total} even on 3 classes."
    )
    return dict(
        config=dict(n=n, d=d, h=h, pool=n_pool, held=n_held, steps=steps),
        failed_runs=failed,
        accuracy={f"{f}/{th or 'dkw'}": r.accuracy for (f, th), r in reports.items()},
        confusion={f"{f}/{th or 'dkw'}": r.confusion for (f, th), r in reports.items()},
        recipes=list(names),
        rule_confusion=conf_rule,
        rule_accuracy_3_classes=correct_rule / total,
        decided_by_ks_tie_break=tie_broken,
        table=rows,
    )


RECIPES_SECTION = Section(
    "recipes",
    run,
    cost=2.4,  # CPU seconds relative to the microscope's (--quick, measured 2026-11-29)
    quick=dict(rec_size=(100, 50, 75), rec_pool=3, rec_held=2, rec_steps=40),
    full=dict(rec_size=(200, 100, 150), rec_pool=6, rec_held=6, rec_steps=150),
)
