r"""The kernel sections of :func:`jaxcompare.compare.compare_models`: kernel similarity and kernel surrogates.

**Kernel similarity** (section ``"similarity"``). Every model's kernel (default: trNTK,
:func:`jaxcompare.ntk.kernel`) is computed on the same ``n_kernel_points`` test points (a random subsample drawn
with the comparison's key; its indices are kept), and every pair is compared by debiased CKA with a permutation
p-value (:func:`jaxcompare.similarity.kernel_similarity`, ``n_permutations`` permutations). Per model,
``kernel_cka`` is the mean CKA with its reference models (the same references as α̂ and churn) and
``kernel_dissimilarity = 1 − kernel_cka`` joins the flag rule of :mod:`jaxcompare.compare._findings`, with the
median permutation-null standard deviation of the CKA as the resolution floor (CKA differences smaller than the
spread of unrelated points' CKA are not called).

**Kernel surrogates** (section ``"surrogate"``, with training data). For every model a kernel GLM surrogate (the
published protocol of :func:`jaxcompare.surrogate.surrogate_table`: one-vs-rest, ``l2 = 1e-4``, balanced class
weights, unnormalized kernels standardized) is fitted on the model's own kernel between ``n_surrogate_train``
training points (subsampled with the key) and the ground-truth labels, and compared with the model on the kernel
test points (:func:`jaxcompare.surrogate.faithfulness`: surrogate accuracy, TAD, τ_K, R_Miss). The surrogate's
logit of its predicted class decomposes over the training points (:func:`jaxcompare.surrogate.attribute`); per
model, ``attribution_overlap`` is the Jaccard overlap of its top-``attribution_k`` training points with those of
each reference model, averaged over the kernel test points and the references (1: the models' predictions rest on
the same training points).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._progress import progress
from ..ntk._inputs import batch_size as inputs_size

__all__ = ["kernel_names", "subsample", "similarity_section", "surrogate_section"]


def kernel_names() -> tuple[str, ...]:
    """Registry kernels the comparison can use: 2-D, built from ``apply_fn`` alone, not projected."""
    from ..ntk import KERNELS

    return tuple(n for n, i in KERNELS.items() if i.needs == "apply_fn" and not i.projected and n != "entk")


def kernel_factory(name: str, projection: Any) -> Any:
    """``apply_fn -> kernel_fn`` of the registry kernel ``name`` (a ``proj_*`` kernel with ``projection``)."""
    from .. import ntk

    opts = {} if projection is None else {"projection": projection}
    return lambda apply_fn: ntk.kernel(name, apply_fn, **opts)


def subsample(key: jax.Array, n: int, size: int) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` distinct points of ``range(n)`` (all of them when ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.asarray(jax.random.choice(key, n, (size,), replace=False)))


def covering_subsample(key: jax.Array, labels: np.ndarray, size: int) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` distinct points that hold at least one point of every label present
    (when ``size`` allows): the points in a random order (``key``), the first point of each label, then the
    others in that order. A plain subsample of 256 of 512 points missed a class of 10 in a run of the benchmark,
    and the surrogates' balanced kGLM failed after every kernel had been computed."""
    n = labels.shape[0]
    if n <= size:
        return np.arange(n)
    order = np.asarray(jax.random.permutation(key, n))
    _, first = np.unique(labels[order], return_index=True)  # each label's first position in the random order
    lead = np.sort(first)[:size]
    rest = np.delete(np.arange(n), lead)[: size - lead.size]
    return np.sort(order[np.concatenate([lead, rest])])


def similarity_section(
    key: jax.Array,
    apply_fn: Any,
    params_list: list,
    names: list[str],
    x: Any,
    ref_of: dict[int, list[int]],
    kernel: str,
    n_permutations: int,
    cache: Any,
    progress_bar: bool | None,
    projection: Any = None,
) -> tuple[dict[str, Any], np.ndarray, float]:
    """``(summary, kernel_cka per model, resolution floor)``; ``summary`` is JSON-able (the CKA and p-value
    matrices, the null's mean and sd, the kernel, its label and the settings). The kernels are those of
    :func:`jaxcompare.similarity.kernel_similarity`, read from or kept in ``cache``."""
    from ..similarity._kernel_similarity import (
        _resolve_kernel,
        auto_block_size,
        model_kernel,
        similarity_of_kernels,
    )

    name, label, factory = _resolve_kernel(kernel, projection)
    bs = auto_block_size(inputs_size(x))
    what = f"similarity kernel {name} {projection!r}"
    kernels = [
        cache.get(
            what,
            (p, x, f"block {bs}"),
            functools.partial(model_kernel, factory, apply_fn, p, x, bs),
            functools.partial(_finite, f"{what} of model {names[i]!r}"),
        )
        for i, p in enumerate(progress(params_list, total=len(names), desc="kernels", enabled=progress_bar))
    ]
    res = similarity_of_kernels(key, kernels, names, name, label, n_permutations, True)
    cka = np.asarray(res.cka, np.float64)
    sd = np.asarray(res.null_sd, np.float64)
    k = len(names)
    mean_cka = np.array([float(np.mean(cka[i, ref_of[i]])) for i in range(k)])
    off = sd[~np.eye(k, dtype=bool)]
    floor = float(np.median(off)) if off.size else 0.0
    summary = {
        "kernel": res.kernel,
        "label": res.label,
        "debiased": True,
        "n_points": inputs_size(x),
        "n_permutations": n_permutations,
        "names": list(names),
        "cka": cka.tolist(),
        "p_value": np.asarray(res.p_value, np.float64).tolist(),
        "null_mean": np.asarray(res.null_mean, np.float64).tolist(),
        "null_sd": sd.tolist(),
        "resolution": floor,
    }
    return summary, mean_cka, floor


def _finite(what: str, a: np.ndarray) -> None:
    """Refuses a kernel with NaN or ±inf entries before it is kept or used."""
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise FloatingPointError(
            f"the {what} has {bad} NaN/inf entries of {a.size}: the model's gradients overflow or are undefined at "
            "these points (in float16, compute the kernel in float32 or bfloat16)."
        )


def _jaccard_overlap(top: np.ndarray, ref_of: dict[int, list[int]]) -> np.ndarray:
    """Mean over test points and references of ``|A ∩ B| / |A ∪ B|`` of the top-k index sets ``top (K, T, k)``."""
    k_models, _, k = top.shape
    out = np.zeros(k_models)
    for i in range(k_models):
        vals = []
        for j in ref_of[i]:
            inter = (top[i][:, :, None] == top[j][:, None, :]).any(-1).sum(-1)  # (T,): top-k sets hold no repeats
            vals.append(np.mean(inter / (2 * k - inter)))
        out[i] = float(np.mean(vals))
    return out


def surrogate_section(
    apply_fn: Any,
    params_list: list,
    names: list[str],
    net_logits: np.ndarray,
    x_te: Any,
    y_te: np.ndarray,
    x_tr: Any,
    y_tr: np.ndarray,
    ref_of: dict[int, list[int]],
    test_points: np.ndarray,
    train_points: np.ndarray,
    kernel: str,
    attribution_k: int,
    n_attribution: int,
    progress_bar: bool | None,
    cache: Any,
    projection: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """``(summary, per-model columns, arrays)`` of the kernel surrogates (module docstring).

    ``net_logits`` are the models' ``(K, T, C)`` logits on the kernel test points ``x_te``; ``test_points`` and
    ``train_points`` are the indices of ``x_te`` and ``x_tr`` in the user's arrays (the attribution table names
    points by them).
    """
    from .. import ntk
    from ..surrogate import attribute, faithfulness, fit_kglm, kglm_logits

    info = ntk.KERNELS[kernel]
    kernel_fn = kernel_factory(kernel, projection)(apply_fn)
    n_classes = net_logits.shape[2]
    cols, top_idx, top_val, sur_pred = [], [], [], []
    for i, p in enumerate(progress(params_list, total=len(names), desc="surrogates", enabled=progress_bar)):
        k_tr = jnp.asarray(
            cache.get(
                f"surrogate kernel {kernel} {projection!r}",
                (p, x_tr),
                functools.partial(kernel_fn, p, x_tr),
                functools.partial(_finite, f"surrogate kernel of model {names[i]!r}"),
            )
        )
        k_te = jnp.asarray(
            cache.get(
                f"surrogate cross kernel {kernel} {projection!r}",
                (p, x_te, x_tr),
                functools.partial(kernel_fn, p, x_te, x_tr),
                functools.partial(_finite, f"surrogate cross kernel of model {names[i]!r}"),
            )
        )
        model = fit_kglm(
            k_tr,
            y_tr,
            n_classes=n_classes,
            loss="ovr",
            l2=1e-4,
            class_weight="balanced",
            standardize=not info.normalized,
            throw=False,
        )
        z = kglm_logits(model, k_te)
        f = faithfulness(jnp.asarray(net_logits[len(cols)]), z, y_te)
        att = attribute(model, k_te, k=min(attribution_k, k_tr.shape[0]))
        cols.append(
            {
                "surrogate_accuracy": float(f.surrogate_accuracy),
                "surrogate_tad": float(f.tad),
                "surrogate_tau": float(f.kendall_tau),
                "surrogate_r_miss": float(f.r_miss),
                "surrogate_converged": bool(model.converged),
            }
        )
        top_idx.append(np.asarray(att.indices))
        top_val.append(np.asarray(att.values, np.float64))
        sur_pred.append(np.asarray(jnp.argmax(z, axis=1)))
    top = np.stack(top_idx)  # (K, T, k), indices into x_tr
    overlap = _jaccard_overlap(top, ref_of)
    for c, o in zip(cols, overlap):
        c["attribution_overlap"] = float(o)
    # the test points the models disagree on most (ties: the earlier point)
    pred = net_logits.argmax(-1)  # (K, T)
    counts = np.stack([(pred == c).sum(0) for c in range(n_classes)])  # (C, T)
    disagreement = 1.0 - counts.max(0) / pred.shape[0]
    shown = np.argsort(-disagreement, kind="stable")[: min(n_attribution, pred.shape[1])]
    idx, val, sp = np.stack(top_idx), np.stack(top_val), np.stack(sur_pred)
    table = [
        {
            "test_index": int(test_points[t]),
            "label": int(y_te[t]),
            "disagreement": float(disagreement[t]),
            "models": [
                {
                    "name": name,
                    "prediction": int(pred[i, t]),
                    "surrogate_prediction": int(sp[i, t]),
                    "top": [
                        {"train_index": int(train_points[j]), "label": int(y_tr[j]), "contribution": float(v)}
                        for j, v in zip(idx[i, t], val[i, t])
                    ],
                }
                for i, name in enumerate(names)
            ],
        }
        for t in shown
    ]
    summary = {
        "kernel": kernel,
        "label": info.label,
        "protocol": "kGLM one-vs-rest, l2 = 1e-4, balanced class weights"
        + ("" if info.normalized else ", kernel standardized by its train×train sd"),
        "n_train": int(np.shape(y_tr)[0]),
        "n_test": int(np.shape(y_te)[0]),
        "attribution_k": int(top.shape[2]),
        "attribution": table,
    }
    arrays = {
        "attribution_indices": np.asarray(train_points)[idx],
        "attribution_values": val,
        "surrogate_predictions": sp,
    }
    return summary, cols, arrays
