"""Section "architectures": MLP, CNN and GRU ensembles on MNIST-1D compared through their NTKs and their scores."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics as M
from .. import surrogate as S
from .. import trimming as T
from ..data import ARCHITECTURES, PAPER_ACCURACY, Recipe, make_mnist1d_model, mnist1d_task, train_ensemble
from ..metrics._scores import logit_scores
from ..similarity import kernel_similarity
from ._report import Report
from ._section import Section, log

__all__ = ["ARCHITECTURES_SECTION", "block_means"]

LABELS = {"mlp": "MLP", "cnn": "CNN", "gru": "GRU"}
LR, BATCH = 1e-2, 100


def block_means(values: np.ndarray, groups: list[str], names: tuple[str, ...]) -> np.ndarray:
    """Mean of ``values[i, j]`` over the pairs ``i ≠ j`` with ``groups[i] = a``, ``groups[j] = b``: ``(G, G)``.

    Example:
      >>> block_means(np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.2], [0.1, 0.2, 1.0]]), ["a", "a", "b"], ("a", "b"))
      array([[0.8 , 0.15],
             [0.15,  nan]])
    """
    g = np.asarray(groups)
    out = np.full((len(names), len(names)), np.nan)
    off = ~np.eye(len(g), dtype=bool)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            sel = (g[:, None] == a) & (g[None, :] == b) & off
            if sel.any():
                out[i, j] = float(np.mean(values[sel]))
    return out


def run(key: jax.Array, report: Report, size: Mapping[str, Any], out_dir: str) -> dict:
    seeds, steps, n_points = size["arch_seeds"], size["arch_steps"], size["arch_points"]
    k_train, k_sim, k_alpha = jax.random.split(key, 3)
    t0 = time.perf_counter()
    task = mnist1d_task(num_samples=size["arch_samples"])
    log(f"architectures: MNIST-1D generated in {time.perf_counter() - t0:.1f}s")
    x_tr, y_tr, x_te, y_te, _ = task
    models, names, groups, rows, logits = [], [], [], [], []
    for i, arch in enumerate(ARCHITECTURES):
        module = make_mnist1d_model(arch)
        t0 = time.perf_counter()
        recipe = Recipe(arch, lr=LR, steps=steps, batch_size=BATCH)
        params = jax.block_until_ready(
            train_ensemble(jax.random.fold_in(k_train, i), module, x_tr, y_tr, 10, [recipe] * seeds)
        )
        t_train = time.perf_counter() - t0

        def apply_fn(p, x, module=module):
            return module.apply({"params": p}, x)

        lg = np.asarray(jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(params, x_te))  # (seeds, T, 10)
        acc = np.mean(np.argmax(lg, -1) == y_te[None], axis=1)
        n_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree_util.tree_leaves(params))
        rows.append(
            {
                "architecture": LABELS[arch],
                "parameters": n_params,
                "test accuracy (mean)": float(acc.mean()),
                "sd over seeds": float(acc.std(ddof=1)) if seeds > 1 else float("nan"),
                "paper (Greydanus 2020)": PAPER_ACCURACY[arch],
                "ECE (mean)": float(np.mean([M.ece(jax.nn.softmax(l), y_te) for l in lg])),
                "training (s)": t_train,
            }
        )
        for s in range(seeds):
            models.append((apply_fn, jax.tree_util.tree_map(lambda a, s=s: a[s], params)))
            names.append(f"{LABELS[arch]} {s}")
            groups.append(arch)
        logits.append(lg)
        log(f"architectures: {seeds} × {arch} trained in {t_train:.1f}s, accuracy {acc.mean():.3f}")
    logits = np.concatenate(logits)

    # kernel similarity (trNTK, debiased CKA, permutation p-values) on the first n_points test signals
    t0 = time.perf_counter()
    sim = kernel_similarity(
        k_sim, models, x_te[:n_points], kernel="trntk", n_permutations=size["arch_perms"], names=names
    )
    cka, pv = np.asarray(sim.cka, float), np.asarray(sim.p_value, float)
    t_sim = time.perf_counter() - t0
    log(f"architectures: kernel similarity of {len(models)} models on {n_points} points in {t_sim:.1f}s")
    blocks = block_means(cka, groups, ARCHITECTURES)
    p_blocks = np.full_like(blocks, np.nan)
    g = np.asarray(groups)
    off = ~np.eye(len(g), dtype=bool)
    for i, a in enumerate(ARCHITECTURES):
        for j, b in enumerate(ARCHITECTURES):
            sel = (g[:, None] == a) & (g[None, :] == b) & off
            if sel.any():
                p_blocks[i, j] = float(pv[sel].max())

    # α̂ on the scores: each architecture's first half of seeds is a reference ensemble, every other model a candidate
    scores = np.asarray(logit_scores(jnp.asarray(logits), jnp.asarray(y_te), score="margin"))
    n_ref = max(1, seeds // 2)
    alpha = np.full((len(ARCHITECTURES), len(ARCHITECTURES)), np.nan)  # rows: candidate arch, cols: reference arch
    t0 = time.perf_counter()
    for j, ref_arch in enumerate(ARCHITECTURES):
        ref = np.flatnonzero(g == ref_arch)[:n_ref]
        cand = np.setdiff1d(np.arange(len(g)), ref)
        res = T.ensemble_alpha_hat(
            jax.random.fold_in(k_alpha, j), scores, candidates=cand, reference=ref, n_boot=size["arch_boot"]
        )
        a = np.asarray(res.alpha_hat, float)
        for i, cand_arch in enumerate(ARCHITECTURES):
            alpha[i, j] = float(np.mean(a[g[cand] == cand_arch]))
    t_alpha = time.perf_counter() - t0

    # surrogate faithfulness: a kernel GLM on each architecture's trNTK (first seed), trained on a subsample of the
    # training signals (the published protocol: one-vs-rest, balanced classes), scored on the kernel test points
    n_surr = min(size["arch_surrogate_train"], len(y_tr))
    surr_rows = []
    t0 = time.perf_counter()
    for arch in ARCHITECTURES if n_surr > 0 else ():  # --quick leaves the surrogates out (≈ 11 s of compiling)
        i = groups.index(arch)
        apply_fn, p0 = models[i]
        tab = S.surrogate_table(
            None,
            apply_fn,
            p0,
            x_tr[:n_surr],
            y_tr[:n_surr],
            x_te[:n_points],
            y_te[:n_points],
            kernels=("trntk",),
            progress_bar=False,
            throw=False,
        )
        r = tab.rows[0]
        surr_rows.append(
            {
                "architecture": LABELS[arch],
                "network accuracy": r.network_accuracy,
                "surrogate accuracy": r.accuracy,
                "TAD (pp)": 100 * r.tad,
                "τ_K": r.kendall_tau,
                "R_Miss": r.r_miss,
                "converged": r.converged,
            }
        )
    t_surr = time.perf_counter() - t0
    log(f"architectures: trNTK surrogates of {len(ARCHITECTURES)} networks in {t_surr:.1f}s")

    report.section(
        "Do architectures learn the same function? MLP, CNN and GRU on MNIST-1D",
        "MNIST-1D (Greydanus 2020) is generated here by the `mnist1d` package's template generator (no download): "
        f"{len(y_tr)} training and {len(y_te)} test signals of 40 points, ten digit templates padded, scaled, "
        "shifted, sheared and made noisy. Shifts make spatial priors matter: a CNN and a GRU beat an MLP by design. "
        f"Each architecture is trained with {seeds} seeds (same data, Adam lr {LR:g}, batch {BATCH}, {steps} steps). "
        "We compare every pair of models by the debiased CKA of their trace NTKs (trNTK) on the same test signals: "
        "1 means the two models see the signals through the same kernel, 0 unrelated kernels; p-values come from "
        "permuting the points (the smallest possible p is 1/(B+1)). α̂ is the fraction of a model's test-score "
        "distribution (margins) that must be trimmed before it looks like a draw from a reference ensemble of one "
        "architecture.",
    )
    report.table(
        rows,
        caption=f"Test accuracy on the {len(y_te)} test signals (paper: 4000 training signals, the mnist1d README)",
    )
    report.kpis(
        {
            "models": len(models),
            "kernel points": n_points,
            "permutations": size["arch_perms"],
            "kernel similarity (s)": t_sim,
            "α̂ (s)": t_alpha,
        }
    )
    report.figure(
        sim.plot(),
        f"Debiased CKA of the trNTKs of every pair of models on {n_points} test signals, with permutation p-values.",
        out_dir=out_dir,
        name="architectures_cka",
    )
    report.table(
        [
            {
                "architecture": LABELS[a],
                **{
                    f"vs {LABELS[b]}": f"{blocks[i, j]:.3f} (p ≤ {p_blocks[i, j]:.3g})"
                    for j, b in enumerate(ARCHITECTURES)
                    if np.isfinite(blocks[i, j])
                },
            }
            for i, a in enumerate(ARCHITECTURES)
        ],
        caption="Mean debiased CKA within (diagonal: pairs of seeds) and across architectures, with the largest "
        "permutation p-value of the block",
    )
    report.table(
        [
            {
                "candidate": LABELS[a],
                **{f"α̂ vs {LABELS[b]} ensemble": alpha[i, j] for j, b in enumerate(ARCHITECTURES)},
            }
            for i, a in enumerate(ARCHITECTURES)
        ],
        caption=f"Mean α̂ of each architecture's models against a reference ensemble of {n_ref} model(s) of each "
        f"architecture (margin scores, {size['arch_boot']} bootstrap rounds; the reference models themselves excluded)",
    )
    if surr_rows:
        report.table(
            surr_rows,
            caption=f"Kernel surrogate of each architecture's first network: a kernel GLM on its trNTK fitted on "
            f"{n_surr} training signals, on the {n_points} kernel test points. TAD: surrogate minus network "
            "accuracy; τ_K: Kendall's τ between the network's and the surrogate's true-class probabilities "
            "(faithfulness per test point); R_Miss: overlap (Jaccard) of the network's and the surrogate's "
            "misclassified points",
        )
    else:
        report.text("Kernel surrogates of each architecture: in the full run (`jaxcompare demo` without `--quick`).")
    within = float(np.nanmean(np.diag(blocks))) if seeds > 1 else float("nan")
    across = float(np.nanmean(blocks[~np.eye(len(ARCHITECTURES), dtype=bool)]))
    report.finding(
        "MNIST-1D architectures: accuracy "
        + ", ".join(f"{r['architecture']} {r['test accuracy (mean)']:.2f}" for r in rows)
        + f" (paper: MLP 0.68, CNN 0.94, GRU 0.91); trNTK CKA {within:.2f} within an architecture vs {across:.2f} "
        "across architectures"
        + ("; trNTK surrogate faithfulness τ_K " if surr_rows else "")
        + ", ".join(f"{r['architecture']} {r['τ_K']:.2f}" for r in surr_rows)
        + "."
    )
    return dict(
        accuracy=rows,
        names=names,
        cka=cka,
        p_value=pv,
        cka_blocks=blocks,
        p_value_blocks_max=p_blocks,
        alpha_hat_blocks=alpha,
        n_points=n_points,
        similarity_seconds=t_sim,
        alpha_seconds=t_alpha,
        surrogates=surr_rows,
        surrogate_train=n_surr,
        surrogate_seconds=t_surr,
    )


ARCHITECTURES_SECTION = Section(
    "architectures",
    run,
    cost=5.9,  # CPU seconds relative to the microscope's (--quick, measured 2026-11-29)
    quick=dict(
        arch_samples=5000,
        arch_seeds=2,
        arch_steps=100,
        arch_points=120,
        arch_perms=49,
        arch_boot=5,
        arch_surrogate_train=0,
    ),
    full=dict(
        arch_samples=5000,
        arch_seeds=4,
        arch_steps=600,
        arch_points=1000,
        arch_perms=199,
        arch_boot=50,
        arch_surrogate_train=1000,
    ),
)
