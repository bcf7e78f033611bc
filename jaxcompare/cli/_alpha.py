"""``jaxcompare alpha``: α̂ of candidate models against a reference ensemble, with the classic metrics beside it."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from ._io import CLIError, check_output_file, load_array, load_matrix

__all__ = ["cmd_alpha"]


def _progress_on(choice: str) -> bool:
    from .._progress import progress_enabled

    if choice != "auto":
        return choice == "always"
    return sys.stderr.isatty() and progress_enabled(None)


def _min_points(level: float, method: str, bootstrap: bool) -> int:
    """Smallest number of test points whose KS threshold is at most 1 (α̂ is meaningless above)."""
    from ..trimming import ks_threshold

    n = 1
    while ks_threshold(n, n, level, method=method) > 1:
        n += 1
    return 2 * n if bootstrap else n


def _metrics(cand: np.ndarray, ref: np.ndarray, y: np.ndarray, logits: bool) -> list[dict[str, float]]:
    import jax

    from .. import metrics as M

    if logits:
        probs_c = np.asarray(jax.nn.softmax(cand, axis=-1))
        probs_r = np.asarray(jax.nn.softmax(ref, axis=-1))
    else:  # binary logit gaps l1 - l0
        probs_c = np.stack([np.asarray(M.binary_probs(s)) for s in cand])
        probs_r = np.stack([np.asarray(M.binary_probs(s)) for s in ref])
    ens = np.asarray(M.ensemble_label(probs_r if logits else ref))  # binary: the sign of the mean gap, as the library
    return [
        dict(accuracy=float(M.accuracy(p, y)), churn=float(M.churn(p, ens)), ece=float(M.ece(p, y))) for p in probs_c
    ]


def cmd_alpha(args) -> int:
    import jax

    import jaxcompare as jc

    from .._progress import progress
    from ..metrics._scores import logit_scores

    if args.out:
        check_output_file(args.out)
    if args.key is not None and (args.candidates_key or args.reference_key):
        raise CLIError("--key names the array in both files; use it alone, or --candidates-key/--reference-key")
    ck = args.candidates_key or args.key
    rk = args.reference_key or args.key
    cand = load_matrix(args.candidates, "candidates", key=ck, key_flag="--candidates-key", max_ndim=3)
    ref = load_matrix(args.reference, "reference", key=rk, key_flag="--reference-key", max_ndim=3)
    if cand.ndim != ref.ndim:
        raise CLIError(
            f"candidates and reference must both be scores (models × points) or both logits (models × "
            f"points × classes); got shapes {cand.shape} and {ref.shape}"
        )
    if cand.shape[1:] != ref.shape[1:]:
        raise CLIError(
            f"candidates and reference must score the same test points (and classes): shapes "
            f"{cand.shape} and {ref.shape}"
        )
    logits = cand.ndim == 3
    n_points = cand.shape[1]
    y = None
    if args.labels:
        y = load_array(args.labels, "labels", key=args.labels_key, key_flag="--labels-key")
        y = np.squeeze(y)
        if y.ndim != 1 or y.shape[0] != n_points:
            raise CLIError(f"labels must be one integer per test point ({n_points},), got shape {y.shape}")
        if y.dtype.kind == "f" and np.any(y != np.round(y)):
            raise CLIError("labels must be integer class indices, got fractional values")
        y = y.astype(np.int64)
        n_classes = cand.shape[2] if logits else 2
        if y.min() < 0 or y.max() >= n_classes:
            hint = "" if logits else " (with scores, labels must be binary 0/1; pass (M, T, C) logits otherwise)"
            raise CLIError(f"labels must lie in [0, {n_classes}), found {y.min()}..{y.max()}{hint}")
    score = args.score
    if logits:
        if cand.shape[2] < 2:
            raise CLIError(f"logits need at least 2 classes, got shape {cand.shape}")
        score = score or ("margin" if y is not None else "logit_gap")
        if score in ("margin", "true_logprob") and y is None:
            raise CLIError(f"--score {score} needs --labels; use --score logit_gap for a label-free score")
        cand_s = np.asarray(logit_scores(cand, y, score=score), np.float64)
        ref_s = np.asarray(logit_scores(ref, y, score=score), np.float64)
    else:
        if score is not None:
            raise CLIError("--score reduces (M, T, C) logits; these inputs are already scores (M, T)")
        cand_s, ref_s = cand.astype(np.float64), ref.astype(np.float64)
        if y is not None and min(cand_s.min(), ref_s.min()) >= 0 and max(cand_s.max(), ref_s.max()) <= 1:
            print(
                "jaxcompare alpha: warning: every score lies in [0, 1], like a probability, but accuracy, churn and "
                "ECE read (M, T) scores as binary logit gaps l1 - l0 (class 1 where > 0); pass logit gaps, or "
                "(M, T, 2) logits",
                file=sys.stderr,
            )
    boot = args.bootstrap > 0
    n = n_points // 2 if boot else n_points
    if boot and n_points < 4:
        raise CLIError(f"the bootstrap needs at least 4 test points, got {n_points}; use --bootstrap 0")
    thr = jc.ks_threshold(n, n, args.level, method=args.threshold_method)
    if thr > 1:
        raise CLIError(
            f"with {n_points} test points the KS threshold at --level {args.level} "
            f"({args.threshold_method}) is δ = {thr:.3g} > 1, so α̂ would be 0 for any candidate; "
            f"use at least {_min_points(args.level, args.threshold_method, boot)} test points, a larger "
            "--level or --threshold-method asymptotic"
        )
    settings = dict(
        candidates=args.candidates,
        reference=args.reference,
        candidates_key=ck,
        reference_key=rk,
        labels=args.labels,
        labels_key=args.labels_key,
        score=score if logits else None,
        level=args.level,
        threshold_method=args.threshold_method,
        bootstrap=args.bootstrap,
        seed=args.seed,
        input="logits" if logits else "scores",
    )
    out: dict[str, Any] = {
        "settings": settings,
        "n_candidates": cand.shape[0],
        "n_reference": ref.shape[0],
        "n_points": n_points,
    }
    show = _progress_on(args.progress)
    if not boot:
        pooled = ref_s.reshape(-1)
        alphas = np.asarray(jax.vmap(lambda c: jc.alpha_hat(c, pooled, threshold=thr))(cand_s))
        sd = None
        out.update(threshold=float(thr), protocol="exact, all points, pooled reference")
    else:
        m = cand_s.shape[0]
        chunk = max(1, math.ceil(m / 20)) if show else m
        parts, sds = [], []
        from .._validation import key_from_seed

        key = key_from_seed(args.seed)
        for i in progress(range(0, m, chunk), total=math.ceil(m / chunk), desc="α̂ bootstrap", enabled=show):
            c = cand_s[i : i + chunk]
            res = jc.ensemble_alpha_hat(
                key,
                np.concatenate([c, ref_s]),
                candidates=np.arange(len(c)),
                reference=np.arange(len(c), len(c) + len(ref_s)),
                n_boot=args.bootstrap,
                level=args.level,
                method=args.threshold_method,
            )
            parts.append(np.asarray(res.alpha_hat))
            sds.append(np.asarray(res.boot).std(axis=1))
        alphas, sd = np.concatenate(parts), np.concatenate(sds)
        out.update(
            threshold=float(res.threshold),
            protocol=f"bootstrap ({args.bootstrap} rounds, disjoint halves of size {res.sample_size})",
        )
    rows = [{"candidate": i, "alpha_hat": float(a)} for i, a in enumerate(alphas)]
    if sd is not None:
        for r, s in zip(rows, sd):
            r["alpha_hat_sd"] = float(s)
    if y is not None:
        for r, mt in zip(rows, _metrics(cand, ref, y, logits)):
            r.update(mt)
    out["alpha_hat"] = alphas.tolist()
    if sd is not None:
        out["alpha_hat_sd"] = sd.tolist()
    out["candidates"] = rows
    print(f"threshold δ = {out['threshold']:.5f}  ({out['protocol']})")
    cols = [c for c in ("alpha_hat", "alpha_hat_sd", "accuracy", "churn", "ece") if c in rows[0]]
    print(f"{'candidate':>9}  " + "  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(f"{r['candidate']:>9}  " + "  ".join(f"{r[c]:>12.4f}" for c in cols))
    if y is not None:
        print("(churn: disagreement with the reference ensemble's label; ece: 15 equal-width bins)")
    if args.out:
        from ..compare._result import to_jsonable

        with open(args.out, "w") as f:  # strict JSON: a NaN (e.g. no spread of one model) as null
            json.dump(to_jsonable(out), f, indent=1, allow_nan=False)
    return 0
