"""AUROC: how well a score ranks positives above negatives (the Mann–Whitney statistic)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from .._validation import at_least_float32, check_array, check_same_length, host_float64, is_concrete

__all__ = ["auroc"]


def auroc(scores: Any, positive: Any) -> jax.Array:
    r"""Area under the ROC curve of ``scores`` for telling ``positive`` points from the others.

    The probability that a random positive scores above a random negative, ties counting one half (the
    Mann–Whitney ``U`` statistic over ``n₊ n₋``):

    .. math:: \mathrm{AUROC} = \frac{1}{n_+ n_-}\sum_{i ∈ +}\sum_{j ∈ -}\big([s_i > s_j] + \tfrac12 [s_i = s_j]\big)
              = \frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-},

    with ``R₊`` the sum of the positives' mid-ranks (ties share their average rank), computed in ``O(n log n)``:
    concrete inputs on the host in float64 NumPy (NumPy scores keep their own precision, so float64 scores that
    differ never tie because ``jax_enable_x64`` is off), traced ones (``jit``/``vmap``) in JAX.
    1 means every positive outranks every negative, 0.5 is chance, 0 a perfect inverse ranking.

    Args:
      scores: ``(n,)`` real scores (higher = more likely positive).
      positive: ``(n,)`` bool (or 0/1) mask of the positive points.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` (the floating dtype of ``scores``, ints promoted to the default float).
      Eagerly, both classes must be non-empty (``ValueError``); under ``jit`` the mask cannot be checked and a
      missing class gives NaN.

    Example:
      >>> float(auroc(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([False, False, True, True])))
      0.75

    References:
      H. B. Mann, D. R. Whitney (1947), On a test of whether one of two random variables is stochastically larger
      than the other, Ann. Math. Statist. 18(1). J. A. Hanley, B. J. McNeil (1982), The meaning and use of the area
      under a ROC curve, Radiology 143(1).
    """
    s = at_least_float32(check_array(scores, "scores", ndim=1))  # ranks and rank sums: not in float16
    m = jnp.asarray(positive)
    if m.ndim != 1:
        raise ValueError(f"positive must be a 1-D mask (one entry per score), got shape {m.shape}.")
    if not (jnp.issubdtype(m.dtype, jnp.bool_) or jnp.issubdtype(m.dtype, jnp.integer)):
        raise TypeError(f"positive must be a bool (or 0/1 integer) mask, got dtype {m.dtype}.")
    check_same_length({"scores": s, "positive": m})
    if is_concrete(m):
        mn = np.asarray(m)
        if mn.dtype.kind != "b" and not np.all((mn == 0) | (mn == 1)):
            raise ValueError("positive must hold only 0/1 (or bool) values.")
        n_pos = int(mn.astype(bool).sum())
        if n_pos == 0 or n_pos == mn.size:
            raise ValueError(
                f"positive must mark at least one positive and one negative point; it marks {n_pos} of "
                f"{mn.size} as positive."
            )
        if is_concrete(s):
            return jnp.asarray(_auroc_host(host_float64(scores, s), mn.astype(bool)), s.dtype)
    return _auroc(s, m.astype(bool))


def _auroc_host(s: np.ndarray, m: np.ndarray) -> float:
    ranks = scipy.stats.rankdata(s, method="average")
    n_pos = float(m.sum())
    n_neg = s.size - n_pos
    # the sorted sum: one value whatever the order of the points (a mid-rank sum is a sum of halves, exact here)
    return (float(np.sum(np.sort(ranks[m]))) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@jax.jit
def _auroc(s: jax.Array, m: jax.Array) -> jax.Array:
    ranks = jax.scipy.stats.rankdata(s, method="average").astype(s.dtype)  # mid-ranks, 1-based
    n_pos = jnp.sum(m, dtype=s.dtype)
    n_neg = jnp.asarray(s.shape[0], s.dtype) - n_pos
    r_pos = jnp.sum(jnp.where(m, ranks, 0), dtype=s.dtype)
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
