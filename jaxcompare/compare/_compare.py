"""``compare_models``: accuracy, churn, ECE and α̂ of many models of one architecture, with findings."""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._progress import progress
from .._validation import check_choice, check_finite, check_int, check_key, check_labels, check_probability
from ..metrics import accuracy, churn, ece, ensemble_label
from ..metrics._auroc import auroc
from ..metrics._scores import SCORE_REDUCTIONS, logit_scores
from ..ntk._inputs import batch_size as inputs_size
from ..ntk._inputs import describe, is_array, take_rows, validate_pair, validate_x
from ..trimming import ensemble_alpha_hat
from ._cache import ArrayCache
from ._findings import ALL_STATISTICS, findings_sentences, flag_bounds
from ._kernels import (
    covering_subsample,
    kernel_factory,
    kernel_names,
    similarity_section,
    subsample,
    surrogate_section,
)
from ._result import ComparisonResult, to_jsonable

__all__ = ["compare_models", "SECTIONS"]

#: Optional sections of :func:`compare_models` (the classic metrics are always computed).
# one line per score reduction, written into results.json
_SCORE_DEFINITIONS = {
    "margin": "true-class logit minus the largest other logit (negative where the model errs)",
    "logit_gap": "l1 - l0 for two classes; else the largest logit minus the second largest (label-free)",
    "true_logprob": "log-probability of the true class, log softmax(logits)[y]",
}

SECTIONS = {
    "alpha": "α̂ ± sd by the published bootstrap protocol, the atypical-model rule and the detection AUROCs",
    "spectra": "per-layer weight spectra of every model (jaxcompare.spectra.analyze_params, when available)",
    "similarity": "debiased CKA between the models' kernels on a subsample of test points, permutation p-values",
    "surrogate": "kernel GLM surrogate of each model: faithfulness (TAD, τ_K, R_Miss) and top training-point "
    "attributions (needs x_train, y_train)",
}


def _call_alpha(key: jax.Array, scores: jax.Array, cand: np.ndarray, ref: np.ndarray, n_boot: int, level: float):
    """``ensemble_alpha_hat`` on the given candidate and reference rows."""
    return ensemble_alpha_hat(key, scores, candidates=cand, reference=ref, n_boot=n_boot, level=level)


def _logits(
    apply_fn: Callable,
    params_list: list,
    x: Any,
    n_classes: int | None,
    batch_size: int | None,
    what: str,
    progress_bar: bool | None,
    cache: ArrayCache,
) -> np.ndarray:
    fn = jax.jit(apply_fn)
    out = []
    n = inputs_size(x)
    bs = n if batch_size is None else batch_size

    def forward(p):
        parts = [_float_logits(fn(p, take_rows(x, s, s + bs))) for s in range(0, n, bs)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def check(i, z):
        nonlocal n_classes
        if z.ndim != 2 or z.shape[0] != n or z.shape[1] < 2:
            raise ValueError(
                f"apply_fn(params, x) must return (N, C) logits with N = {n} and C >= 2; "
                f"model {i} returned shape {z.shape}."
            )
        if n_classes is not None and z.shape[1] != n_classes:
            raise ValueError(f"model {i} returns {z.shape[1]} classes, model 0 returns {n_classes}.")
        n_classes = z.shape[1]
        check_finite(z, f"logits of model {i} on {what}")

    for i, p in enumerate(
        progress(params_list, total=len(params_list), desc=f"forward ({what})", enabled=progress_bar)
    ):
        z = cache.get(
            f"logits on {what}", (p, x, f"batch {bs}"), functools.partial(forward, p), functools.partial(check, i)
        )
        check(i, z)  # a stored entry was checked when it was kept; its shape is checked against this call's
        out.append(z)
    return np.stack(out)


def _float_logits(z: Any) -> np.ndarray:
    """Logits on the host, half precision (float16, bfloat16) widened to float32: the probabilities and scores
    of 16-bit logits did not sum to 1 within the checks' tolerance (and ``.npy`` cannot hold bfloat16)."""
    z = np.asarray(z)
    if z.dtype.kind == "V" or (z.dtype.kind == "f" and z.dtype.itemsize < 4):
        z = z.astype(np.float32)
    return z


def _compare_words(text: str) -> str:
    """A warning of ``analyze_params`` in the words of a comparison: its ``stacked=`` argument is
    ``spectra_options={'stacked': …}`` here (``--stacked`` on the command line)."""
    return re.sub(
        r"Pass stacked= \(a regular expression of the stacked paths, e\.g\. stacked=('[^']*')\)",
        r"Pass spectra_options={'stacked': \1} (CLI --stacked \1; a regular expression of the stacked paths)",
        text,
    )


def _rows(x: Any, idx: np.ndarray) -> Any:
    """The rows ``idx`` of every leaf of an input batch (an array is a one-leaf tree)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[idx], x)


def _shapes(x: Any) -> Any:
    """JSON form of an input batch's shape: a list, or ``{leaf path: list}`` for a pytree."""
    if is_array(x):
        return list(x.shape)
    return {jax.tree_util.keystr(p): list(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(x)}


def _split_names(params_list: Any, names: Sequence[str] | None) -> tuple[list, list[str]]:
    if isinstance(params_list, Mapping):  # {"name": params}: the names are its keys (iterating gave the names)
        if names is not None:
            raise ValueError("params_list is a dict of name -> params: its keys are the names; do not pass names=.")
        return _split_names(list(params_list.items()), None)
    items = list(params_list)
    pairs = all(isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str) for it in items)
    if pairs and items:
        got = [n for n, _ in items]
        items = [p for _, p in items]
        names = got if names is None else names
    if names is None:
        names = [f"model {i}" for i in range(len(items))]
    names = [str(n) for n in names]
    if len(names) != len(items):
        raise ValueError(f"names must have one entry per model ({len(items)}), got {len(names)}.")
    if len(set(names)) != len(names):
        dup = [n for n, c in Counter(names).items() if c > 1]
        raise ValueError(f"names must be unique; repeated: {dup}.")
    return items, names


def _check_same_params(params_list: list, names: list[str]) -> None:
    """One architecture: every model's parameters have the first one's structure and leaf shapes (a bias of
    shape (1,) where (C,) is expected would broadcast silently)."""
    leaves0, tree0 = jax.tree_util.tree_flatten_with_path(params_list[0])
    for name, p in zip(names[1:], params_list[1:]):
        leaves, tree = jax.tree_util.tree_flatten_with_path(p)
        if tree != tree0:
            raise ValueError(
                f"params_list must hold parameter pytrees of one structure (one architecture): {name!r} differs "
                f"from {names[0]!r} ({tree} vs {tree0})."
            )
        for (path, a), (_, b) in zip(leaves, leaves0):
            if np.shape(a) != np.shape(b):
                raise ValueError(
                    f"params_list must hold parameters of one architecture: {name!r}{jax.tree_util.keystr(path)} "
                    f"has shape {np.shape(a)}, {names[0]!r} has {np.shape(b)}."
                )


def _same_label(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays of several values and the like
        return a is b


def _resolve_groups(groups: Sequence[Any] | None, reference: Any, k: int) -> tuple[list[str] | None, str | None]:
    if groups is None:
        if reference is not None:
            raise ValueError("reference names a group, so groups must be given (one group per model).")
        return None, None
    if isinstance(groups, str):
        raise TypeError(f"groups must be a sequence of group names, one per model, got the string {groups!r}.")
    g = [str(x) for x in groups]
    first: dict[str, Any] = {}
    merged = {s for s, v in zip(g, groups) if not _same_label(first.setdefault(s, v), v)}
    if merged:
        raise ValueError(
            f"groups holds different values with one name: {sorted(merged)} (e.g. 1 and '1'); use one type of label."
        )
    if len(g) != k:
        raise ValueError(f"groups must have one entry per model ({k}), got {len(g)}.")
    counts = Counter(g)
    if reference is None:
        reference = max(counts, key=lambda name: (counts[name], -g.index(name)))  # largest; ties: first seen
    reference = str(reference)
    if reference not in counts:
        raise ValueError(f"reference group {reference!r} is not among the groups {sorted(counts)}.")
    if counts[reference] < 2:
        raise ValueError(
            f"the reference group {reference!r} needs at least 2 models (each is compared with the "
            f"others), got {counts[reference]}."
        )
    return g, reference


def compare_models(
    key: Any,
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params_list: Sequence[Any],
    x_test: Any,
    y_test: Any,
    *,
    names: Sequence[str] | None = None,
    x_train: Any = None,
    y_train: Any = None,
    groups: Sequence[Any] | None = None,
    reference: Any = None,
    score: str = "margin",
    n_boot: int = 100,
    level: float = 0.01,
    n_bins: int = 15,
    sections: Sequence[str] = tuple(SECTIONS),
    kernel: str = "trntk",
    n_kernel_points: int = 128,
    n_permutations: int = 199,
    n_surrogate_train: int = 500,
    attribution_k: int = 5,
    n_attribution: int = 3,
    batch_size: int | None = None,
    spectra_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    projection: Any = None,
    progress_bar: bool | None = None,
) -> ComparisonResult:
    r"""Compare ``K`` trained models of one architecture: classic metrics, α̂, atypical models, findings.

    For each model ``k`` with logits ``ℓ_k = apply_fn(params_k, x_test)`` (``(T, C)``) and probabilities
    ``softmax(ℓ_k)``:

    * ``accuracy`` (:func:`jaxcompare.accuracy`), ``ece`` (:func:`jaxcompare.ece`, top-label, ``n_bins``
      equal-width bins), ``churn`` against the reference ensemble's label (:func:`jaxcompare.ensemble_label` of the
      reference models' probabilities, :func:`jaxcompare.churn`), ``accuracy_gap = |accuracy − median reference
      accuracy|``; with ``x_train, y_train`` also ``train_accuracy`` and ``generalization_gap``;
    * ``alpha_hat`` and ``alpha_hat_sd`` (mean and standard deviation over the ``n_boot`` bootstrap rounds of the
      published protocol, :func:`jaxcompare.ensemble_alpha_hat`) of the model's scores
      ``logit_scores(ℓ_k, y_test, score=score)`` against the reference models' pooled scores.

    **Reference.** With ``groups``, the reference models are those of group ``reference`` (default: the largest
    group); every other model is a candidate compared with all of them, and each reference model is compared with
    the *other* reference models (leave-one-out), so that the reference's own spread is known. Without groups every
    model is compared with all the others (leave-one-out). Churn and the accuracy gap use the same references.

    **Atypical models** exceed the bound of the rule documented in :mod:`jaxcompare.compare._findings` (with groups:
    above the reference models' own leave-one-out α̂ range and their median + 3 robust sd). The same rule on
    churn, ECE and the accuracy gap says which classic statistics agree. With groups, ``detection`` holds the
    AUROC (:func:`jaxcompare.metrics.auroc`) of each statistic for telling each non-reference group from the
    reference models.

    **Kernels** (:mod:`jaxcompare.compare._kernels`). Section ``"similarity"``: the debiased CKA between every pair
    of models' kernels on ``n_kernel_points`` test points (a subsample drawn with ``key``), with permutation
    p-values; per model ``kernel_cka`` (mean CKA with its reference models) and ``kernel_dissimilarity = 1 −
    kernel_cka``, which the flag rule also judges. Section ``"surrogate"`` (with ``x_train, y_train``): a kernel
    GLM surrogate of each model on its own kernel between ``n_surrogate_train`` training points, its faithfulness
    on the kernel test points (``surrogate_accuracy, surrogate_tad, surrogate_tau`` (τ_K), ``surrogate_r_miss``)
    and ``attribution_overlap`` (top-``attribution_k`` training points shared with the reference models), with
    a table of the top training points behind the ``n_attribution`` test points the models disagree on most.

    Args:
      key: PRNG key (``jax.random.key``) of the bootstrap.
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits, ``C >= 2`` (a flax module: ``lambda p, x:
        module.apply({"params": p}, x)``). Jitted once and called per model.
      params_list: ``K >= 2`` parameter pytrees of the same structure, or ``(name, params)`` pairs as returned by
        :func:`load_checkpoints`.
      x_test: ``(T, ...)`` test inputs, ``T >= 4``, or a pytree of them with one leading size ``T`` (e.g.
        ``{"tokens": (T, L), "mask": (T, L)}``), passed to ``apply_fn`` as it is, in slices of rows.
      y_test: ``(T,)`` integer labels in ``[0, C)``.
      names: ``K`` unique model names (default: from the pairs, else ``"model i"``).
      x_train, y_train: optional training data (both or neither) for the train accuracy; ``x_train`` of
        ``x_test``'s structure.
      groups: ``K`` group labels (e.g. the training recipe), or ``None``.
      reference: the reference group (with ``groups``; default the largest, ties: first seen).
      score: the score reduction of :func:`jaxcompare.metrics.logit_scores` (``"margin"``, ``"logit_gap"``,
        ``"true_logprob"``).
      n_boot: bootstrap rounds of α̂ (published: 100).
      level: KS acceptance level of the α̂ threshold (published: 0.01).
      n_bins: ECE bins.
      sections: optional sections, a subset of :data:`SECTIONS` (default all; ``"surrogate"`` runs only with
        training data and is listed in ``skipped`` otherwise).
      kernel: the kernel of both kernel sections, a 2-D registry kernel built from ``apply_fn``
        (``"trntk"``, ``"trntk0"``, ``"pntk"``, ``"pntk0"``; :data:`jaxcompare.ntk.KERNELS`).
      n_kernel_points: test points the kernels are computed on (subsampled when ``T`` is larger; ``>= 4``).
        Cost: ``K`` kernels of ``n²`` entries, and a permutation null of ``O(n_permutations · K² · n²)``.
      n_permutations: permutations of each CKA p-value (``>= 1``; the smallest p-value is ``1/(1 + B)``).
      n_surrogate_train: training points of the surrogates (subsampled; the kGLM fit is ``O(n²)`` per step).
      attribution_k: training points kept per explained prediction.
      n_attribution: test points in the attribution table.
      batch_size: evaluate ``apply_fn`` on at most this many points at a time (default all at once).
      spectra_options: keyword arguments of :func:`jaxcompare.spectra.analyze_params` for the ``"spectra"``
        section, any of ``conv``, ``heads``, ``stacked``, ``matrix_fn``, ``min_dim``, ``tw_margin``, ``ks``,
        ``min_tail``, ``max_candidates`` (e.g. ``{"stacked": "ScanBlock"}`` for layers stacked by ``nn.scan``,
        ``{"heads": "split"}`` for per-head attention matrices). Checked, and the spectra computed, before the
        models are evaluated; the warnings of ``analyze_params`` (kernels that look stacked) are listed in
        ``settings["spectra_warnings"]`` and on the report.
      cache_dir: a directory where each model's logits and kernels are kept as they are computed (verified
        ``.npy`` files named by a hash of the model function, the model's parameters, the inputs and the kernel;
        :mod:`jaxcompare.compare._cache`): a comparison that was interrupted, or rerun with other sections,
        models or statistics, reads what it computed before instead of recomputing it. ``settings`` records the
        entries read and computed. Default: nothing kept.
      projection: ``jc.structured_projection(key, dim)`` (or ``jc.random_projection``): both kernel sections then
        use the kernel of projected gradients (``kernel="trntk"`` → ``"proj_trntk"``, ``"pntk"`` → ``"proj_pntk"``;
        the unnormalized kernels have no projected variant), the same projection for every model — for models
        too large for exact kernels. The features cost time linear in the points, the exact kernel quadratic:
        on a quarter-width ResNet-18 the sketch was 1.4× faster at 256 points and about 4× at 1024
        (``docs/benchmarks.md``); CKA between projected kernels carries their error (mean |Δcos| about 0.001 there
        at ``dim = 1024``).
      progress_bar: progress on stderr (``None``: on unless ``JAXCOMPARE_PROGRESS=0``).

    Returns:
      :class:`ComparisonResult` (``.rows``, ``.to_dict()``, ``.to_pandas()``, ``.save(dir)``, ``.report(dir)``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (200, 3)); y = (x[:, 0] > 0).astype(jnp.int32)
      >>> fn = lambda p, x: jnp.stack([-x @ p["w"], x @ p["w"]], axis=1)
      >>> ps = [{"w": jnp.array([1.0, 0.1 * i, 0.0])} for i in range(4)] + [{"w": jnp.array([0.0, 1.0, 0.0])}]
      >>> res = compare_models(jax.random.key(1), fn, ps, x, y, n_boot=20, sections=("alpha",), progress_bar=False)
      >>> res.atypical
      ['model 4']

    References:
      S. Banerjee et al. (2025), the α-trimmed KS comparison and its bootstrap protocol (spec/trimming.md);
      C. Guo et al. (2017), On calibration of modern neural networks (ECE).
    """
    key = check_key(key)
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (params, x) -> logits, got {type(apply_fn).__name__}.")
    params_list, names = _split_names(params_list, names)
    k = len(params_list)
    if k < 2:
        raise ValueError(f"params_list must hold at least 2 models to compare, got {k}.")
    x = validate_x(x_test, "x_test")  # an array (T, ...) or a pytree of them (tokens and mask, ...)
    if inputs_size(x) < 4:
        raise ValueError(f"x_test must have at least 4 points (first axis) for the bootstrap, got {describe(x)}.")
    y = np.asarray(check_labels(y_test, "y_test", length=inputs_size(x)))
    if (x_train is None) != (y_train is None):
        raise ValueError("x_train and y_train must be given together (or neither).")
    check_choice(score, "score", SCORE_REDUCTIONS)
    n_boot = check_int(n_boot, "n_boot", min=1)
    level = float(check_probability(level, "level"))
    n_bins = check_int(n_bins, "n_bins", min=1)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", min=1)
    sections = (sections,) if isinstance(sections, str) else tuple(sections)  # "alpha" is one section, not five
    for s in sections:
        check_choice(s, "sections", tuple(SECTIONS))
    check_choice(kernel, "kernel", kernel_names())
    kernel_name = kernel
    if projection is not None and not {"similarity", "surrogate"} & set(sections):
        raise ValueError(
            "projection applies to the kernel sections (similarity, surrogate), which sections leaves out."
        )
    if projection is not None:
        from ..similarity._kernel_similarity import _resolve_kernel

        kernel_name = _resolve_kernel(kernel, projection)[0]  # "trntk" -> "proj_trntk"; no variant: an error
        kernel_factory(kernel_name, projection)(apply_fn)  # a projection of the wrong kind: refused before work
    n_kernel_points = check_int(n_kernel_points, "n_kernel_points", min=4)
    n_permutations = check_int(n_permutations, "n_permutations", min=1)
    n_surrogate_train = check_int(n_surrogate_train, "n_surrogate_train", min=2)
    attribution_k = check_int(attribution_k, "attribution_k", min=1)
    n_attribution = check_int(n_attribution, "n_attribution", min=1)
    grp, ref_group = _resolve_groups(groups, reference, k)
    skipped: dict[str, str] = {}
    if x_train is not None:
        x, x_train = validate_pair(x, x_train, ("x_test", "x_train"))
    if x_train is not None and "surrogate" in sections:
        n_tr = min(n_surrogate_train, inputs_size(x_train))
        if attribution_k > n_tr:
            raise ValueError(
                f"attribution_k ({attribution_k}) must be at most the surrogates' training points ({n_tr} = "
                "min(n_surrogate_train, len(x_train))): their top-k would be every training point."
            )
    _check_same_params(params_list, names)
    spectra, spectra_cols = (None, None)
    if "spectra" in sections:  # before the models run: a wrong option or stacked= pattern costs nothing
        spectra, spectra_cols = _spectra(params_list, names, spectra_options, skipped, progress_bar)
    elif spectra_options is not None:
        raise ValueError("spectra_options were given but the 'spectra' section is not in sections.")

    cache = ArrayCache(cache_dir, apply_fn, params_list[0], x, min(inputs_size(x), batch_size or inputs_size(x)))
    logits = _logits(apply_fn, params_list, x, None, batch_size, "x_test", progress_bar, cache)  # (K, T, C)
    n_test, n_classes = logits.shape[1], logits.shape[2]
    if y.max() >= n_classes:
        raise ValueError(
            f"y_test must lie in [0, {n_classes}) (the models return {n_classes} classes); found {int(y.max())}."
        )
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    scores = np.asarray(logit_scores(logits, y, score=score))  # (K, T)

    if grp is None:
        ref_of = {i: [j for j in range(k) if j != i] for i in range(k)}
        roles = ["leave-one-out"] * k
        ref_mask = np.ones(k, bool)
    else:
        ref_idx = [i for i in range(k) if grp[i] == ref_group]
        ref_of = {i: ([j for j in ref_idx if j != i] if i in ref_idx else ref_idx) for i in range(k)}
        roles = ["reference" if i in ref_idx else "candidate" for i in range(k)]
        ref_mask = np.array([r == "reference" for r in roles])

    rows: list[dict[str, Any]] = []
    for i in range(k):
        others = ref_of[i]
        ens = ensemble_label(probs[others])
        ref_acc = [float(accuracy(logits[j], y)) for j in others]
        acc = float(accuracy(logits[i], y))
        rows.append(
            {
                "name": names[i],
                "group": grp[i] if grp else None,
                "role": roles[i],
                "accuracy": acc,
                "accuracy_gap": abs(acc - float(np.median(ref_acc))),
                "churn": float(churn(logits[i], ens)),
                "ece": float(ece(probs[i], y, n_bins=n_bins)),
            }
        )
    xt = yt = None
    if x_train is not None:
        xt = x_train
        yt = np.asarray(check_labels(y_train, "y_train", n_classes, length=inputs_size(xt)))
        if "surrogate" in sections:  # before the training logits and every kernel, not in the last section
            _check_surrogate_classes(yt, n_classes, n_surrogate_train)
        lt = _logits(apply_fn, params_list, xt, n_classes, batch_size, "x_train", progress_bar, cache)
        for i, r in enumerate(rows):
            r["train_accuracy"] = float(accuracy(lt[i], yt))
            r["generalization_gap"] = r["train_accuracy"] - r["accuracy"]

    settings: dict[str, Any] = {
        "n_models": k,
        "n_test": n_test,
        "n_classes": n_classes,
        "score": score,
        "score_definition": _SCORE_DEFINITIONS[score],
        "n_boot": n_boot,
        "level": level,
        "n_bins": n_bins,
        "ece": "top-label, equal-width bins",
        "sections": list(sections),
        "reference": ref_group,
        "groups": grp,
        "names": names,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "x_test_shape": _shapes(x),
        "train_data": x_train is not None,
    }
    arrays: dict[str, np.ndarray] = {"scores": scores}
    values = {s: np.array([r[s] for r in rows]) for s in ALL_STATISTICS if s in rows[0]}
    if "alpha" in sections:
        values["alpha_hat"] = _alpha_columns(
            key, scores, rows, ref_of, grp, ref_mask, n_boot, level, settings, arrays, progress_bar
        )
    floors: dict[str, float] = {}
    kern = _kernel_settings(
        key, sections, n_test, n_kernel_points, yt, n_surrogate_train, kernel_name, settings, arrays
    )
    if projection is not None and "test" in kern:
        settings.update(projection=repr(projection))
    similarity = surrogate = None
    if "similarity" in sections:
        similarity, kcka, floors["kernel_dissimilarity"] = similarity_section(
            kern["k_perm"], apply_fn, params_list, names, _rows(x, kern["test"]), ref_of, kernel_name, n_permutations,
            cache, progress_bar, projection,
        )  # fmt: skip
        for r, c in zip(rows, kcka):
            r["kernel_cka"], r["kernel_dissimilarity"] = float(c), float(1.0 - c)
        values["kernel_dissimilarity"] = 1.0 - kcka
        settings.update(n_permutations=n_permutations, cka="debiased (unbiased HSIC)")
    if "surrogate" in sections and xt is None:
        skipped["surrogate"] = "it needs training data (x_train, y_train; for the command, in the --data file)"
    elif "surrogate" in sections:
        te, tr = kern["test"], kern["train"]
        surrogate, cols, more = surrogate_section(
            apply_fn, params_list, names, logits[:, te], _rows(x, te), y[te], _rows(xt, tr), yt[tr], ref_of, te, tr,
            kernel_name, attribution_k, n_attribution, progress_bar, cache, projection,
        )  # fmt: skip
        for r, c in zip(rows, cols):
            r.update(c)
        arrays.update(more)
        settings.update(attribution_k=attribution_k, n_attribution=n_attribution)
    bounds = flag_bounds(values, ref_mask, n_test, grp is not None, floors)
    for i, r in enumerate(rows):
        r["flags"] = {s: bool(values[s][i] > bounds[s]["bound"]) for s in values}
        if "alpha_hat" in values:  # the Monte Carlo error of the bootstrap mean counts (see _findings)
            r["flags"]["alpha_hat"] = bool(
                r["alpha_hat"] - 2 * r["alpha_hat_sd"] / np.sqrt(n_boot) > bounds["alpha_hat"]["bound"]
            )
        r["atypical"] = r["flags"].get("alpha_hat", False)
    detection = _detection(rows, values, grp, ref_group) if grp is not None else []
    if spectra is not None:
        for r, cols in zip(rows, spectra_cols["columns"]):
            r.update(cols)
        settings.update(spectra_options=spectra_cols["options"], spectra_warnings=spectra_cols["warnings"])
    settings.update(cache.settings())
    findings = findings_sentences(rows, bounds, detection, settings, skipped, similarity, surrogate)
    return ComparisonResult(
        rows=rows,
        detection=detection,
        bounds=bounds,
        findings=findings,
        settings=settings,
        skipped=skipped,
        spectra=spectra,
        arrays=arrays,
        similarity=similarity,
        surrogate=surrogate,
    )


def _check_surrogate_classes(yt: np.ndarray, n_classes: int, n_train: int) -> None:
    """The surrogates' kGLM weighs classes by their frequency ("balanced"): every class needs training points,
    and the subsample one of each (:func:`covering_subsample`)."""
    missing = sorted(set(range(n_classes)) - set(np.unique(yt).tolist()))
    if missing:
        raise ValueError(
            f"y_train has no point of class(es) {missing[:10]} of the models' {n_classes}: the surrogate section's "
            "kGLM needs every class in its training points; add training points of those classes or leave "
            "'surrogate' out of sections."
        )
    if min(n_train, yt.shape[0]) < n_classes:
        raise ValueError(
            f"n_surrogate_train = {n_train} cannot hold one training point of each of the {n_classes} classes; "
            f"use at least {n_classes}."
        )


def _kernel_settings(key, sections, n_test, n_points, yt, n_train, kernel, settings, arrays) -> dict[str, Any]:
    """Subsamples of the kernel sections (keys folded from ``key``: the α̂ bootstrap keeps its own stream); the
    surrogates' training points hold every class (``yt``: the training labels, None without training data)."""
    k_sub, k_perm, k_train = jax.random.split(jax.random.fold_in(key, 1), 3)
    out: dict[str, Any] = {"k_perm": k_perm}
    if "similarity" in sections or ("surrogate" in sections and yt is not None):
        out["test"] = subsample(k_sub, n_test, n_points)
        arrays["kernel_points"] = out["test"]
        settings.update(kernel=kernel, n_kernel_points=int(out["test"].size))
    if "surrogate" in sections and yt is not None:
        out["train"] = covering_subsample(k_train, yt, n_train)
        arrays["surrogate_train_points"] = out["train"]
        settings.update(n_surrogate_train=int(out["train"].size))
    return out


def _alpha_columns(key, scores, rows, ref_of, grp, ref_mask, n_boot, level, settings, arrays, progress_bar):
    k = len(rows)
    s = jnp.asarray(scores)
    alpha = np.zeros(k)
    boot = np.zeros((k, n_boot))
    k_cand, k_loo = jax.random.split(key)
    thr = None
    loo = list(range(k)) if grp is None else [i for i in range(k) if ref_mask[i]]
    cand = [] if grp is None else [i for i in range(k) if not ref_mask[i]]
    if cand:
        res = _call_alpha(k_cand, s, np.array(cand), np.array(ref_of[cand[0]]), n_boot, level)
        alpha[cand] = np.asarray(res.alpha_hat)
        boot[cand] = np.asarray(res.boot)
        thr = float(res.threshold)
    for i in progress(loo, total=len(loo), desc="α̂ leave-one-out", enabled=progress_bar):
        res = _call_alpha(jax.random.fold_in(k_loo, i), s, np.array([i]), np.array(ref_of[i]), n_boot, level)
        alpha[i] = float(res.alpha_hat[0])
        boot[i] = np.asarray(res.boot[0])
        thr = float(res.threshold)
    sd = boot.std(axis=1)
    order = np.argsort(-alpha, kind="stable")
    rank = np.empty(k, int)
    rank[order] = np.arange(1, k + 1)
    for i, r in enumerate(rows):
        r["alpha_hat"], r["alpha_hat_sd"], r["rank"] = float(alpha[i]), float(sd[i]), int(rank[i])
    settings.update(
        threshold=thr,
        sample_size=int(scores.shape[1] // 2),
        alpha_protocol=(
            f"bootstrap, {n_boot} rounds, two disjoint halves of the test set, {scores.shape[1] // 2} draws each; "
            "alpha_hat_sd = standard deviation over rounds"
        ),
    )
    arrays["alpha_boot"] = boot
    return alpha


_SPECTRA_OPTIONS = ("conv", "heads", "stacked", "matrix_fn", "min_dim", "tw_margin", "ks", "min_tail", "max_candidates")


def _spectra(params_list, names, options, skipped, progress_bar) -> tuple[dict | None, dict | None]:
    """Per-layer spectra of every model (``jaxcompare.spectra.analyze_params`` with ``options``, without the
    bootstrap p-value): ``(spectra, {"columns": per-model row columns, "options", "warnings"})``, or ``(None,
    None)`` with the reason in ``skipped`` when a model has no weight matrix to analyse."""
    from ..spectra import analyze_params
    from ..spectra._layers import NO_BOOTSTRAP_NOTE

    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"spectra_options must be a mapping of analyze_params options, got {type(options).__name__}.")
    bad = [o for o in options if o not in _SPECTRA_OPTIONS]
    if bad:
        raise ValueError(
            f"spectra_options: unknown option(s) {bad}; choose from {', '.join(_SPECTRA_OPTIONS)} "
            "(the bootstrap options of analyze_params do not apply: the section runs without a key)."
        )
    out, columns, seen = {}, [], []
    for name, p in zip(names, progress(params_list, total=len(names), desc="spectra", enabled=progress_bar)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = analyze_params(p, **options)
            except ValueError as e:
                if not str(e).startswith("params has no weight matrix"):
                    raise  # a wrong option or a stacked= pattern matching nothing: the caller's to fix
                skipped["spectra"] = f"analyze_params refused model {name!r}: {str(e).splitlines()[0]}"
                return None, None
        for w in caught:
            text = _compare_words(str(w.message))
            if text not in seen:
                seen.append(text)
                warnings.warn(text, w.category, stacklevel=3)
        out[name] = to_jsonable(res.to_dict(eigenvalues=False))
        for lay in out[name].get("layers", []):  # the section runs without the p-value: no advice to pass a key
            if lay.get("note") == NO_BOOTSTRAP_NOTE:
                lay["note"] = ""
        alphas = [lay["alpha"] for lay in res.rows if np.isfinite(lay["alpha"])]
        columns.append({
            "spectral_outliers": int(sum(lay["n_outliers"] for lay in res.rows)),
            "tail_alpha_mean": float(np.mean(alphas)) if alphas else None,
        })  # fmt: skip
    used = {k: v for k, v in res.settings.items() if k in _SPECTRA_OPTIONS}
    return out, {"columns": columns, "options": to_jsonable(used), "warnings": seen}


def _detection(rows, values, grp, ref_group) -> list[dict[str, Any]]:
    out = []
    ref = np.array([g == ref_group for g in grp])
    for g in dict.fromkeys(grp):
        if g == ref_group:
            continue
        pos = np.array([x == g for x in grp])
        sel = pos | ref
        for stat in ALL_STATISTICS:
            if stat in values:
                a = float(
                    auroc(
                        jnp.asarray(values[stat][sel], jnp.float64 if jax.config.jax_enable_x64 else jnp.float32),
                        jnp.asarray(pos[sel]),
                    )
                )
                out.append(
                    {
                        "group": g,
                        "statistic": stat,
                        "auroc": a,
                        "n_group": int(pos.sum()),
                        "n_reference": int(ref.sum()),
                    }
                )
    return out
