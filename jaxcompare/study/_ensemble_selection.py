"""Part of section "ensembles": α̂-guided ensembling against naive and accuracy-based ensembles of a mixed pool."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics as M
from .. import trimming as T
from ..metrics._scores import logit_scores
from ._report import Report
from ._section import log

__all__ = ["ensemble_metrics", "selection_part"]


def ensemble_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, NLL and ECE (15 equal-width bins) of the average of ``probs`` ``(k, T, C)`` over its members.

    Example (averaged probabilities (0.8, 0.2) and (0.3, 0.7), both right: ECE = ((1 − 0.8) + (1 − 0.7)) / 2 = 0.25,
    NLL = −(ln 0.8 + ln 0.7) / 2):
      >>> p = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.4, 0.6]]])
      >>> {k: round(v, 4) for k, v in ensemble_metrics(p, np.array([0, 1])).items()}
      {'accuracy': 1.0, 'NLL': 0.2899, 'ECE': 0.25}
    """
    p = np.mean(probs, axis=0)
    y = np.asarray(y)
    nll = float(-np.mean(np.log(np.clip(p[np.arange(y.shape[0]), y], 1e-12, 1.0))))
    return {
        "accuracy": float(np.mean(np.argmax(p, -1) == y)),
        "NLL": nll,
        "ECE": float(M.ece(jnp.asarray(p), jnp.asarray(y))),
    }


def selection_part(
    key: jax.Array,
    report: Report,
    logits: np.ndarray,
    y: np.ndarray,
    recipe_of: np.ndarray,
    pool_idx: np.ndarray,
    size: Mapping[str, Any],
) -> dict:
    """For each perturbed recipe (and all of them together) a pool of the standard models ``pool_idx`` plus that
    recipe's models; members chosen on one half of the test points, ensembles evaluated on the other half."""
    n_test = y.shape[0]
    k_split, k_sel = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(k_split, n_test))
    sel_pts, ev_pts = np.sort(perm[: n_test // 2]), np.sort(perm[n_test // 2 :])
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    scores = np.asarray(logit_scores(jnp.asarray(logits[:, sel_pts]), jnp.asarray(y[sel_pts]), score="margin"))
    acc_sel = np.mean(np.argmax(logits[:, sel_pts], -1) == y[sel_pts][None], axis=1)
    perturbed = [r for r in dict.fromkeys(recipe_of.tolist()) if r != "standard"]
    scenarios = {r: np.flatnonzero(recipe_of == r) for r in perturbed}
    scenarios["all three"] = np.flatnonzero(recipe_of != "standard")
    k = max(2, len(pool_idx) // 2)
    rows, t0 = [], time.perf_counter()
    for i, (scen, bad) in enumerate(scenarios.items()):
        pool = np.concatenate([pool_idx, bad])
        is_bad = np.isin(pool, bad)
        chosen = T.select_members(jax.random.fold_in(k_sel, i), scores[pool], k=k, n_boot=size["sel_boot"])
        by_acc = np.argsort(-acc_sel[pool], kind="stable")[:k]
        for label, members in (
            (f"naive (all {len(pool)})", np.arange(len(pool))),
            (f"α̂-selected ({k})", chosen.members),
            (f"accuracy-selected ({k})", by_acc),
            (f"standard models only ({len(pool_idx)}, oracle)", np.flatnonzero(~is_bad)),
        ):
            rows.append(
                {
                    "perturbed part of the pool": scen,
                    "ensemble": label,
                    "perturbed kept": f"{int(is_bad[members].sum())}/{len(members)}",
                    **ensemble_metrics(probs[pool[members]][:, ev_pts], y[ev_pts]),
                }
            )
    t_sel = time.perf_counter() - t0
    acc0 = rows[0]["accuracy"]
    log(f"ensembles: α̂-guided selection of {len(scenarios)} pools in {t_sel:.1f}s")
    report.text(
        "α̂-guided ensembling. Protocol: the test digits are split at random into a selection half "
        f"({len(sel_pts)} points) and an evaluation half ({len(ev_pts)}). A pool holds the {len(pool_idx)} standard "
        "candidate models plus the models of one perturbed recipe (or of all three). From the pool we keep "
        f"k = {k} members three ways, looking only at the selection half: the k with the smallest α̂ against the rest "
        "of the pool (`select_members`, the pool trimmed against each model, leave-one-out, margin scores, "
        f"{size['sel_boot']} bootstrap rounds), the k most accurate, or all of them (naive); the oracle row keeps "
        "exactly the standard models. Each ensemble averages its members' probabilities; accuracy, NLL and ECE "
        "(15 bins) are measured on the evaluation half only. One training seed per model: differences in accuracy "
        f"below about {2 * np.sqrt(acc0 * (1 - acc0) / len(ev_pts)):.3f} (two binomial standard errors) are within "
        "noise."
    )
    report.table(rows, caption="Ensembles chosen from a partly perturbed pool (evaluation half of the test digits)")
    by = {(r["perturbed part of the pool"], r["ensemble"].split(" (")[0]): r for r in rows}
    mixed_naive, mixed_alpha = by[("all three", "naive")], by[("all three", "α̂-selected")]
    report.finding(
        f"α̂-guided ensembles (10-class digits, pool with all three perturbed recipes): α̂-selected kept "
        f"{mixed_alpha['perturbed kept']} perturbed, NLL {mixed_alpha['NLL']:.3f} and ECE {mixed_alpha['ECE']:.3f} "
        f"vs naive NLL {mixed_naive['NLL']:.3f}, ECE {mixed_naive['ECE']:.3f}."
    )
    return dict(selection_points=len(sel_pts), evaluation_points=len(ev_pts), k=k, rows=rows, selection_seconds=t_sel)
