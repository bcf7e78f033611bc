"""α̂-guided ensembling: keep the members that are most typical of the pool."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import at_least_float32, check_array, check_choice, check_int, check_key, is_concrete
from ._common import exact_order, resolve_threshold
from ._core import make_grid, solve_alpha_hat
from ._ensemble import _bootstrap_halves, ensemble_alpha_hat

__all__ = ["select_members", "MemberSelection"]


@dataclasses.dataclass(frozen=True)
class MemberSelection:
    """Result of :func:`select_members`.

    Attributes:
      members: ``(k,)`` indices of the selected models, most typical first.
      alpha: ``(M,)`` α̂ of every model (see ``direction`` in :func:`select_members`), bootstrap mean.
    """

    members: np.ndarray
    alpha: np.ndarray


def select_members(
    key: Any,
    scores: Any,
    *,
    k: int,
    direction: str = "pool",
    n_boot: int = 20,
    sample_size: int | None = None,
    level: float = 0.01,
    threshold: Any = None,
) -> MemberSelection:
    r"""Choose ``k`` ensemble members by α̂ against the pool: the ``k`` most typical models (smallest α̂).

    Bootstrap as in :func:`ensemble_alpha_hat`: in each of ``n_boot`` rounds, :func:`bootstrap_halves` draws ``x1``
    and ``x2`` (``n`` indices each from disjoint halves of the ``T`` selection points); a model's sample is its
    scores on ``x1``, the pool's sample the pooled scores of the other models on ``x2``; α̂ is averaged over rounds
    (DKW threshold ``ks_threshold(n, n, level)`` unless ``threshold`` is given). Two directions:

    * ``direction="pool"`` (default, leave-one-out): α̂ of the **pool** (all other ``M − 1`` models) against the
      model — the smallest ``α`` with ``pool = (1 − α) P̃ + α Q`` and ``P̃`` within KS distance ``δ`` of the model:
      how much of the pool is unlike this model. When a minority of the pool was trained by a perturbed recipe, a
      standard model explains the majority of the pool (α̂ ≈ the perturbed fraction) and a perturbed model only the
      minority (α̂ ≈ the standard fraction), so the ``k`` smallest are the majority recipe's models.
    * ``direction="candidate"`` (the published direction, cross-fitted): the models are split at random into two
      halves; each model's α̂ (the model trimmed) is computed against the pooled other half with
      :func:`ensemble_alpha_hat`. Trimming only the model cannot add mass where the pool has mass and the model
      has none, so against a *mixed* pool every model can get α̂ near 1 and the ranking favours models whose
      scores spread over the pool's whole range; use it when the pool is known to be clean.

    The ``k`` models of smallest α̂ are kept (ties broken by the model index). ``scores`` may be label-free (e.g.
    ``logit_scores(..., score="logit_gap")``) or use validation labels (``"margin"``); evaluate the ensemble on
    points that were not used to select it.

    Args:
      key: PRNG key (``jax.random.key``): the bootstrap (and the split into halves).
      scores: ``(M, T)`` scalar scores of ``M >= 4`` models on the same ``T`` selection points.
      k: number of members to keep, in ``[1, M]``.
      direction: ``"pool"`` or ``"candidate"``.
      n_boot: bootstrap rounds.
      sample_size: points per half-sample ``n``, at most ``T // 2`` (default ``T // 2``).
      level, threshold: as in :func:`ensemble_alpha_hat`.

    Returns:
      :class:`MemberSelection` (host-side arrays).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = jax.random.normal(jax.random.key(1), (8, 400))
      >>> s = s.at[2].add(3.0)          # model 2 is atypical
      >>> sel = select_members(jax.random.key(0), s, k=6)
      >>> 2 in sel.members.tolist(), int(jnp.argmax(jnp.asarray(sel.alpha)))
      (False, 2)

    References:
      Sarwate (2025), lectures on comparing trained models ("use α̂ to design new methods for model ensembling").
    """
    key = check_key(key)
    s = check_array(scores, "scores", ndim=2)
    s = at_least_float32(exact_order([(scores, s)])[0])  # KS-type: the order of the scores (counts in float32)
    if not is_concrete(s):
        raise TypeError("select_members needs concrete scores (it returns host-side indices), got a tracer.")
    check_choice(direction, "direction", ("pool", "candidate"))
    n_models, n_test = s.shape
    if n_models < 4:
        raise ValueError(f"scores needs at least 4 models (rows) to select against the others, got {n_models}.")
    if n_test < 2:
        raise ValueError(f"scores needs at least 2 selection points (columns) to split into halves, got {n_test}.")
    k = check_int(k, "k", min=1, max=n_models)
    n_boot = check_int(n_boot, "n_boot", min=1)
    if direction == "pool":
        n = n_test // 2 if sample_size is None else check_int(sample_size, "sample_size", min=1, max=n_test // 2)
        delta = jnp.asarray(resolve_threshold(threshold, level, n, n), s.dtype)
        others = np.asarray([[j for j in range(n_models) if j != i] for i in range(n_models)])
        alpha = np.asarray(_pool_alpha(s, jnp.asarray(others), key, delta, n_boot, n), float)
    else:
        alpha = _crossfit_alpha(key, s, n_boot, sample_size, level, threshold)
    order = np.lexsort((np.arange(n_models), alpha))
    return MemberSelection(members=order[:k], alpha=alpha)


def _crossfit_alpha(key, s, n_boot, sample_size, level, threshold) -> np.ndarray:
    n_models = s.shape[0]
    k_split, k_a, k_b = jax.random.split(key, 3)
    perm = np.asarray(jax.random.permutation(k_split, n_models))
    half_a, half_b = np.sort(perm[: n_models // 2]), np.sort(perm[n_models // 2 :])
    alpha = np.zeros(n_models)
    for kk, cand, ref in ((k_a, half_a, half_b), (k_b, half_b, half_a)):
        res = ensemble_alpha_hat(
            kk,
            s,
            candidates=jnp.asarray(cand),
            reference=jnp.asarray(ref),
            n_boot=n_boot,
            sample_size=sample_size,
            level=level,
            threshold=threshold,
        )
        alpha[cand] = np.asarray(res.alpha_hat)
    return alpha


@partial(jax.jit, static_argnums=(4, 5))
def _pool_alpha(s, others, key, delta, n_boot, n):
    n_models, n_test = s.shape
    dtype = s.dtype

    def one_round(kr):
        x1, x2 = _bootstrap_halves(kr, n_test, n)

        def one(i):
            model = s[i, x1]
            pooled = s[others[i]][:, x2].reshape(-1)  # trimmed: the pool, against the model
            grid = make_grid(pooled, jnp.sort(model))
            return solve_alpha_hat(grid, delta, dtype).alpha

        return jax.vmap(one)(jnp.arange(n_models))

    return jnp.mean(jax.lax.map(one_round, jax.random.split(key, n_boot)), axis=0)
