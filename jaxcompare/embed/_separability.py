"""Held-out LDA separability of labelled sources, with a Wilson confidence interval."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_result
from .._results import report_result
from .._validation import REQUIRED, check_int, check_key, check_probability, is_concrete, key_first
from ._common import check_class_labels, check_data, stratified_folds, wilson_interval
from ._lda import SINGULAR_MESSAGE, _fit_lda, _predict_lda, _shrinkage_mode, _singular_warning

__all__ = ["Separability", "separability"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["accuracy", "ci_low", "ci_high", "fold_accuracies", "chance", "shrinkage", "result"],
    meta_fields=["n_samples", "level", "interval"],
)
@dataclasses.dataclass(frozen=True)
class Separability:
    """Cross-validated separability of sources.

    Attributes:
      accuracy: ``()`` held-out accuracy pooled over all folds (each sample is predicted once, by the model that did
        not see it).
      ci_low, ci_high: ``()`` Wilson score interval at ``level`` for the accuracy.
      fold_accuracies: ``(folds,)`` accuracy of each fold.
      chance: ``()`` accuracy of always predicting the most frequent source (the level to beat).
      shrinkage: ``(folds,)`` LDA shrinkage intensity used in each fold.
      n_samples: number of samples.
      level: confidence level of the interval.
      interval: ``"wilson"``.
      result: ``()`` int32 :class:`jaxcompare.Result` code: ``singular`` when the LDA fit of some fold was singular
        (no within-class scatter; that fold then used a nearest-class-mean rule), else ``successful``.
    """

    accuracy: jax.Array
    ci_low: jax.Array
    ci_high: jax.Array
    fold_accuracies: jax.Array
    chance: jax.Array
    shrinkage: jax.Array
    n_samples: int
    level: float
    interval: str = "wilson"
    result: jax.Array | None = None


@partial(jax.jit, static_argnames=("folds", "n_classes", "mode", "level"))
def _separability(key, X, y, alpha, folds, n_classes, mode, level):
    n, d = X.shape
    fold_of = stratified_folds(key, y, folds)

    def one_fold(f):
        train = fold_of != f
        state = _fit_lda(X, y, train.astype(X.dtype), alpha, n_classes, n_classes - 1, mode)
        pred = _predict_lda(state, X)
        test = ~train
        return jnp.sum((pred == y) & test), jnp.sum(test), state.shrinkage, state.result

    correct, sizes, shrink, codes = jax.lax.map(one_fold, jnp.arange(folds))
    correct = correct.astype(X.dtype)
    sizes = sizes.astype(X.dtype)
    total = jnp.sum(correct)
    acc = total / n
    lo, hi = wilson_interval(total, jnp.asarray(n, X.dtype), level)
    counts = jnp.sum(jax.nn.one_hot(y, n_classes, dtype=X.dtype), axis=0)
    chance = jnp.max(counts) / n
    return Separability(acc, lo, hi, correct / sizes, chance, shrink, n, level, "wilson", jnp.max(codes))


def separability(
    key: Any = REQUIRED,
    embeddings: Any = REQUIRED,
    labels: Any = REQUIRED,
    /,
    *,
    folds: int = 5,
    shrinkage: Any = "auto",
    level: float = 0.95,
    n_classes: int | None = None,
    throw: bool = True,
    **deprecated: Any,
) -> Separability:
    r"""How well LDA tells the sources apart on held-out samples.

    The samples are split into ``folds`` stratified folds (drawn from ``key``); for each fold an LDA classifier
    (Bayes rule under shared Gaussian class covariances, :math:`\hat y = \arg\max_c (x-\bar x)^\top S_w^{-1}(\mu_c -
    \bar x) - \tfrac12 \|\mu_c-\bar x\|^2_{S_w^{-1}} + \log p_c`) is fitted on the other folds and predicts this one.
    The pooled held-out accuracy :math:`\hat a = c/n` gets a Wilson score interval,
    :math:`\frac{\hat a + z^2/2n}{1+z^2/n} \pm \frac{z}{1+z^2/n}\sqrt{\hat a(1-\hat a)/n + z^2/4n^2}`, which treats the
    :math:`n` held-out predictions as independent trials; cross-validation folds share training data, so the true
    uncertainty is somewhat larger (the interval is a good guide, not an exact guarantee). For a calibrated yes/no
    answer use :func:`two_sample_test`. Compare ``accuracy`` with ``chance`` (the majority-class rate).

    The folds run sequentially (``lax.map``) inside one compiled function, so memory is that of a single LDA fit:
    the data, one residual copy and a :math:`d\times d` covariance.

    Args:
      key: PRNG key for the fold assignment, the first positional argument (``separability(X, labels, key=k)``
        still works for one release, with a ``DeprecationWarning``).
      embeddings: ``(n, d)`` samples.
      labels: ``(n,)`` integer source labels in ``[0, K)``; at least two sources with two samples each.
      folds: number of folds, ``2 <= folds <= n``.
      shrinkage: LDA shrinkage (``"auto"`` Ledoit-Wolf by default, robust when :math:`d` is close to or above
        :math:`n`; ``None`` or a float in ``[0, 1]`` as in :func:`lda`).
      level: confidence level of the interval, in (0, 1).
      n_classes: number of sources :math:`K` (default ``max(labels) + 1``; needed under ``jit``/``vmap``).
      throw: raise ``ValueError`` when a fold's LDA fit is singular (``result``); ``False`` warns with
        :class:`jaxcompare.SolverWarning` and returns the flagged result (:class:`jaxcompare.Result`).

    Returns:
      :class:`Separability`.

    Example:
      >>> X = jax.random.normal(jax.random.key(0), (100, 4), jnp.float32)   # 100 float32 embeddings
      >>> sources = (jnp.arange(100) >= 50).astype(jnp.int32)
      >>> X = X.at[:, 0].add(2.0 * sources)   # source 1 is shifted along feature 0
      >>> res = embed.separability(jax.random.key(1), X, sources)
      >>> print(f"{res.accuracy:.3f} [{res.ci_low:.3f}, {res.ci_high:.3f}] (chance {res.chance:.2f})")
      0.850 [0.767, 0.907] (chance 0.50)
    """
    key, embeddings, labels = key_first(
        "separability", (key, embeddings, labels), deprecated, ("key", "embeddings", "labels")
    )
    key = check_key(key)
    X = check_data(embeddings, "embeddings")
    n, d = X.shape
    y, K = check_class_labels(labels, n, n_classes)
    folds = check_int(folds, "folds", min=2, max=n)
    check_probability(level, "level")
    level = float(level)
    mode, alpha = _shrinkage_mode(shrinkage)
    if is_concrete(y):
        counts = np.bincount(np.asarray(y), minlength=K)
        small = [c for c in range(K) if 0 < counts[c] < 2]
        if small:
            raise ValueError(
                f"every source needs at least 2 samples for cross-validation; source(s) {small} have only one."
            )
    n_train = n - -(-n // folds)  # smallest training fold
    if mode == "none" and d > n_train - K:
        _singular_warning(d, n_train, K)
        mode = "auto"
    res = _separability(key, X, y, alpha, folds, K, mode, level)
    traced_result(res.result, throw, "separability")
    report_result(
        res.result, throw, "separability: LDA failed in at least one fold: " + SINGULAR_MESSAGE, error=ValueError
    )
    return res
