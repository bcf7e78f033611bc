"""Benchmark: recipe identification by α̂ on held-out simulator seeds, and α̂-guided ensemble selection.

Part 1 (which optimizer trained this network?): the linear-width simulator (``--size n d h``, default 200 100 150),
the four optimizers of the study's lwr section (GD η = 0.2n; SGD η = 1, batch 32; SGD η = 150, batch 32, 50 steps;
Adam lr 0.3, batch 32; 150 steps unless stated). Seed ``s`` draws the data, the initialization and the minibatches.
Reference pools: seeds ``0..k−1``; candidates: seeds ``k..k+h−1`` (held out). Features: the eigenvalues of the
weights ``WᵀW/h``, the CK and the NTK after training. Thresholds: the DKW default and ``"pool"`` (leave-one-out).
Printed: accuracy and confusion matrix per feature and threshold, beside the hand-set rule of
``lwr.spectral_diagnosis`` on the same held-out runs (it only tells "GD or small-step SGD" apart from the others).

Part 2 (α̂-guided ensembling): digits (10 classes), ``make_mlp(10, width=32)``, ``--n-std`` models of the standard
recipe plus ``--n-bad`` of one perturbed recipe from ``jaxcompare.data.RECIPES`` (each in turn). The test split is
cut in two: a selection half (scores and accuracies used to choose members) and an evaluation half. Ensembles of
averaged probabilities: all models (naive), the ``--k`` of smallest α̂ (:func:`select_members` on the margin scores
of the selection half, both directions: the pool trimmed against each model, leave-one-out, the default; and each
model trimmed against the other half, the published direction) and the ``--k`` most accurate on the selection
half. Reported on the evaluation half: accuracy, NLL and ECE (15 bins), and how many perturbed models each
selection kept.

Part 3 (which recipe trained this digit classifier?): the study's ensembles-section models (``make_mlp`` width 64,
depth 2, Adam, minibatches of 64) trained with each of the four recipes of ``jaxcompare.data.RECIPES`` (standard;
label noise 20%; under-trained, 40 steps; large lr 3e-2), ``--id-models`` seeds each (default 8), full step
counts, on the binary (even vs odd) and the 10-class digits task. Two-fold identification over seeds (the study's
``crossval_identification``): pools of one half of each recipe's seeds identify the other half, then the halves
swap, so every model is identified once by pools that do not contain it. Features: the test-score distribution
(logit gap / margin, as unaligned values) and the eigenvalues of ``WᵀW`` of the second hidden layer; thresholds DKW
and ``"pool"``. Printed: the study's table (accuracy per feature and threshold) and the confusion matrices.

Usage: ``python benchmarks/bench_recipes.py [--size 200 100 150] [--pool 6] [--held 6] [--n-std 10] [--n-bad 6]
[--id-models 8] [--skip identification ensembles digit-recipes]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

RULE_TO_RECIPE = {
    "heavy tails: adaptive optimizer (Adam-like)": "Adam",
    "aligned spike: large-step (S)GD": "SGD large",
    "bulk unchanged: GD or small-step SGD": "GD or SGD small",
    "outliers without alignment": "outliers",
}


def simulate(cfg, n_seeds):
    """The study's recipes (`jaxcompare.study._recipes.simulate_recipes`, 150 steps), under this benchmark's names."""
    from jaxcompare.study._recipes import simulate_recipes

    names = {"GD": "GD", "SGD small step": "SGD small", "SGD large step": "SGD large", "Adam": "Adam"}
    sims = simulate_recipes(cfg, n_seeds, steps=150)
    for name, out in sims.items():
        print(f"  {names[name]}: failed runs {int(np.sum(out['result'] != 0))}")
    return {names[k]: v for k, v in sims.items()}


def part_identification(args):
    from jaxcompare import lwr
    from jaxcompare.lwr._diagnosis import spectral_diagnosis
    from jaxcompare.trimming._recipes import evaluate_identification

    n, d, h = args.size
    cfg = lwr.LWRConfig(n=n, d=d, h=h)
    print(
        f"## Part 1: which optimizer? (n, d, h) = ({n}, {d}, {h}); pools seeds 0..{args.pool - 1}, "
        f"held-out seeds {args.pool}..{args.pool + args.held - 1}"
    )
    sims = simulate(cfg, args.pool + args.held)
    for feat in ("weights", "ck", "ntk"):
        for th in (None, "pool"):
            t0 = time.perf_counter()
            rep = evaluate_identification(
                {k: v[feat][args.pool :] for k, v in sims.items()},
                {k: v[feat][: args.pool] for k, v in sims.items()},
                threshold=th,
            )
            print(
                f"\nfeature={feat}, threshold={th or 'DKW'}: accuracy {rep.accuracy:.3f} "
                f"({int(np.trace(rep.confusion))}/{int(rep.confusion.sum())}), {time.perf_counter() - t0:.2f}s"
            )
            print(rep.table())
    cols = ["GD or SGD small", "SGD large", "Adam", "outliers"]
    print("\nHand-set rule (lwr.spectral_diagnosis) on the same held-out runs (rows true, columns verdict):")
    conf = {k: dict.fromkeys(cols, 0) for k in sims}
    for name, v in sims.items():
        for s in range(args.pool, args.pool + args.held):
            verdict = spectral_diagnosis(v["init"][s], v["weights"][s], float(min(v["align"][s], 1.0))).verdict
            conf[name][RULE_TO_RECIPE[verdict]] += 1
    print("true".ljust(12) + "".join(c.rjust(18) for c in cols))
    ok = 0
    for name in sims:
        print(name.ljust(12) + "".join(str(conf[name][c]).rjust(18) for c in cols))
        ok += conf[name]["GD or SGD small" if name in ("GD", "SGD small") else name]
    total = 4 * args.held
    print(
        f"rule: {ok}/{total} in the right coarse class (3 classes; it cannot separate GD from small-step SGD: "
        f"at most {total // 2 + total // 4}/{total} = {(total // 2 + total // 4) / total:.2f} on 4 classes)"
    )


def part_ensembles(args):
    import jax
    import jax.numpy as jnp

    from jaxcompare import ece, logit_scores
    from jaxcompare.data import RECIPES, digits_task, make_mlp, train_ensemble
    from jaxcompare.trimming._selection import select_members

    task = digits_task("multiclass", seed=0)
    half = task.x_test.shape[0] // 2
    x_sel, y_sel = task.x_test[:half], task.y_test[:half]
    x_ev, y_ev = task.x_test[half:], task.y_test[half:]
    module = make_mlp(10, width=32)
    std = RECIPES["standard"]
    print(
        f"\n## Part 2: α̂-guided ensembles (digits, {args.n_std} standard + {args.n_bad} perturbed, keep "
        f"k = {args.k}; selection on {half} test points, evaluation on {x_ev.shape[0]})"
    )
    print("| perturbed recipe | ensemble | kept perturbed | accuracy | NLL | ECE |")
    print("|---|---|---|---|---|---|")
    for i, bad_name in enumerate(n for n in RECIPES if n != "standard"):
        recipes = [std] * args.n_std + [RECIPES[bad_name]] * args.n_bad
        t0 = time.perf_counter()
        params = train_ensemble(jax.random.key(100 + i), module, task.x_train, task.y_train, 10, recipes)
        logits = jax.vmap(lambda p, x: module.apply({"params": p}, x), in_axes=(0, None))
        l_sel, l_ev = logits(params, jnp.asarray(x_sel)), logits(params, jnp.asarray(x_ev))
        scores = logit_scores(l_sel, jnp.asarray(y_sel))
        sel = select_members(jax.random.key(7), scores, k=args.k).members
        sel_c = select_members(jax.random.key(7), scores, k=args.k, direction="candidate").members
        acc_sel = np.asarray(jnp.mean(jnp.argmax(l_sel, -1) == jnp.asarray(y_sel)[None], axis=1))
        by_acc = np.argsort(-acc_sel, kind="stable")[: args.k]
        is_bad = np.arange(len(recipes)) >= args.n_std
        for label, members in (
            ("naive (all)", np.arange(len(recipes))),
            ("α̂-selected (pool trimmed)", sel),
            ("α̂-selected (model trimmed)", sel_c),
            ("accuracy-selected", by_acc),
        ):
            p = jnp.mean(jax.nn.softmax(l_ev[jnp.asarray(members)], axis=-1), axis=0)
            y = jnp.asarray(y_ev)
            acc = float(jnp.mean(jnp.argmax(p, -1) == y))
            nll = float(-jnp.mean(jnp.log(jnp.clip(p[jnp.arange(y.shape[0]), y], 1e-12))))
            e = float(ece(p, y))
            print(
                f"| {bad_name} | {label} | {int(is_bad[members].sum())}/{len(members)} | {acc:.4f} | {nll:.4f} "
                f"| {e:.4f} |"
            )
        print(f"<!-- {bad_name}: {time.perf_counter() - t0:.1f}s -->")


def part_digit_recipes(args):
    import jax

    from jaxcompare.data import RECIPES, digits_task, make_mlp, train_ensemble
    from jaxcompare.metrics._scores import logit_scores
    from jaxcompare.study import Report
    from jaxcompare.study._ensembles import DEPTH, WIDTH
    from jaxcompare.study._recipes import identification_part, weight_spectra

    k = args.id_models
    print(
        f"\n## Part 3: which recipe trained this digit classifier? {k} seeds per recipe, pools of {k // 2}, two folds"
    )
    for i, task in enumerate(("binary", "multiclass")):
        x_tr, y_tr, x_te, y_te, names = digits_task(task)
        n_classes = len(names)
        module = make_mlp(n_classes, width=WIDTH, depth=DEPTH)
        recipes = [r for r in RECIPES.values() for _ in range(k)]
        t0 = time.perf_counter()
        params = jax.block_until_ready(train_ensemble(jax.random.key(200 + i), module, x_tr, y_tr, n_classes, recipes))
        t_train = time.perf_counter() - t0
        logits = jax.jit(jax.vmap(module.apply, in_axes=({"params": 0}, None)))({"params": params}, x_te)
        score = "logit_gap" if n_classes == 2 else "margin"
        feats = {
            f"test-score distribution: {score.replace('_', ' ')}": np.asarray(logit_scores(logits, y_te, score=score)),
            "eigenvalues of WᵀW, hidden layer 2": weight_spectra(params, "Dense_1"),
        }
        recipe_of = np.array([r.name for r in recipes])
        out = identification_part(Report(""), feats, recipe_of, list(RECIPES), k, task)
        print(f"\n### {task} ({len(recipes)} models trained in {t_train:.1f}s)")
        print("| feature | threshold | identified | accuracy | time (s) |")
        print("|---|---|---|---|---|")
        for r in out["table"]:
            print(
                f"| {r['feature (per model)']} | {r['threshold']} | {r['identified']} | {r['accuracy']:.3f} "
                f"| {r['time (s)']:.2f} |"
            )
        for key, conf in out["confusion"].items():
            print(f"\nconfusion, {key} (rows true, columns identified; order {', '.join(out['recipes'])}):")
            print(np.asarray(conf))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=(200, 100, 150))
    ap.add_argument("--pool", type=int, default=6)
    ap.add_argument("--held", type=int, default=6)
    ap.add_argument("--n-std", type=int, default=10)
    ap.add_argument("--n-bad", type=int, default=6)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--id-models", type=int, default=8)
    ap.add_argument("--skip", choices=("identification", "ensembles", "digit-recipes"), nargs="*", default=())
    args = ap.parse_args()
    print(f"load: {os.getloadavg()}")
    t0 = time.perf_counter()
    if "identification" not in args.skip:
        part_identification(args)
    if "ensembles" not in args.skip:
        part_ensembles(args)
    if "digit-recipes" not in args.skip:
        part_digit_recipes(args)
    print(f"\ntotal {time.perf_counter() - t0:.1f}s; load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
