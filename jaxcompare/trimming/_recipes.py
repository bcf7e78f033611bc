"""α̂ beyond scores: compare a model's unaligned values (e.g. eigenvalues) with recipe pools; identify its recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite
from .._precision import accumulation_dtype
from .._validation import at_least_float32, check_array, check_float, check_probability, is_concrete
from ._common import exact_order, resolve_threshold, sort_input
from ._core import make_grid, solve_alpha_hat, trimmed_distance

__all__ = [
    "recipe_alpha",
    "pool_threshold",
    "identify_recipe",
    "RecipeIdentification",
    "evaluate_identification",
    "IdentificationReport",
]


def _check_pool(pool: Any, name: str = "pool") -> jax.Array:
    p = check_array(pool, name, ndim=(1, 2))
    traced_finite(p, name)
    return p if p.ndim == 2 else p[None, :]


def _check_candidate(candidate: Any) -> jax.Array:
    c = check_array(candidate, "candidate", ndim=1)
    traced_finite(c, "candidate")
    return c


def _ks(c: jax.Array, r_sorted: jax.Array) -> jax.Array:
    """Two-sample KS statistic ``sup |F_c − F_r|`` (the value of ``scipy.stats.ks_2samp``)."""
    cs = jnp.sort(c)
    z = jnp.concatenate([cs, r_sorted])
    fc = jnp.searchsorted(cs, z, side="right").astype(c.dtype) / cs.shape[0]
    fr = jnp.searchsorted(r_sorted, z, side="right").astype(c.dtype) / r_sorted.shape[0]
    return jnp.max(jnp.abs(fc - fr))


@jax.jit
def _alpha_and_ks(c: jax.Array, pool: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
    r = sort_input(pool.reshape(-1).astype(c.dtype))
    grid = make_grid(c, r)
    alpha = solve_alpha_hat(grid, delta.astype(c.dtype), c.dtype).alpha
    return alpha, trimmed_distance(grid, jnp.asarray(1.0, c.dtype), c.dtype)


def _alpha_and_ks_fixed(pool: jax.Array, delta: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _alpha_and_ks(c, pool, delta)


@jax.jit
def _loo_ks(pool: jax.Array) -> jax.Array:
    """``(R,)`` KS distance of each pool member against the pooled values of the other members."""
    n_models = pool.shape[0]

    def one(i):
        keep = jnp.arange(n_models) != i
        # the member's own values are moved to +inf slots, then dropped by sorting and slicing: static shapes
        rest = jnp.where(keep[:, None], pool, jnp.inf).reshape(-1)
        rest = jnp.sort(rest)[: (n_models - 1) * pool.shape[1]]
        return _ks(pool[i], rest)

    return jax.lax.map(one, jnp.arange(n_models))


def pool_threshold(pool: Any, *, quantile: float = 1.0) -> jax.Array:
    r"""A KS threshold calibrated on the pool itself: how far its own members are from the rest of it.

    For a pool of ``R`` models, ``D_i = KS(values_i, pooled values of the other R − 1)``; the threshold is the
    ``quantile`` of ``D_1..D_R`` (default: the maximum, so that every member of the pool has α̂ = 0 against the
    others). Use it when the values of one model are not independent draws — eigenvalues of a random matrix are
    far more rigid than i.i.d. points (fluctuations ``O(1/d)`` instead of ``O(1/√d)``), so the DKW bound of
    :func:`ks_threshold` is very conservative for spectra and leaves α̂ = 0 for every close recipe. α̂ against a
    pool with its own threshold reads "how much of the candidate must be trimmed before it is as close to the pool
    as the pool's own members are".

    Args:
      pool: ``(R, n)`` values of ``R >= 2`` models (one row each).
      quantile: in ``(0, 1]``; the quantile of the leave-one-out distances (linear interpolation).

    Returns:
      Scalar in ``[0, 1]`` in the pool's floating dtype: the quantile raised by ``8·eps`` of the dtype, so that
      rounding never puts it below a member's own distance as the α̂ solver computes it.

    Example:
      >>> import jax.numpy as jnp
      >>> pool = jnp.array([[0.0, 1.0, 2.0, 3.0], [0.5, 1.5, 2.5, 3.5]])
      >>> round(float(pool_threshold(pool)), 6)   # KS of [0,1,2,3] vs [.5,1.5,2.5,3.5]
      0.25
    """
    p = check_array(pool, "pool", ndim=2)
    traced_finite(p, "pool")
    p = at_least_float32(exact_order([(pool, p)])[0])
    if p.shape[0] < 2:
        raise ValueError(f"pool needs at least 2 models (rows) for a leave-one-out threshold, got shape {p.shape}.")
    check_float(quantile, "quantile", low=0.0, high=1.0, low_open=True)
    return _pool_delta(p, quantile)


def _pool_delta(pool: jax.Array, quantile: float) -> jax.Array:
    """The ``quantile`` of the members' leave-one-out KS distances, raised by 8 ulps of 1 (capped at 1).

    The α̂ solver forms a member's distance from its own counts (``j/N`` where :func:`_ks` forms ``1 − (N − j)/N``,
    say): the two roundings can differ by an ulp or two of 1, and a threshold an ulp below the member's own
    distance gave that member α̂ > 0 — α̂ = 1 where the distance comes from pool mass outside the member's range,
    which no trimming reaches — instead of the promised 0. The raise is ``8·eps`` (1e-6 in float32), far below any
    distance the threshold tells apart."""
    t = jnp.quantile(_loo_ks(pool), quantile)
    return jnp.minimum(t + 8 * jnp.finfo(pool.dtype).eps, 1.0).astype(pool.dtype)


def _resolve(threshold: Any, level: float, m: int, pool: jax.Array) -> jax.Array:
    if isinstance(threshold, str):
        if threshold != "pool":
            raise ValueError(f'threshold must be a number in (0, 1], None or "pool", got {threshold!r}.')
        if pool.shape[0] < 2:
            raise ValueError(
                f'threshold="pool" needs a 2-D pool of at least 2 models (rows), got {pool.shape[0]} row(s).'
            )
        return _pool_delta(pool, 1.0)
    return jnp.asarray(resolve_threshold(threshold, level, m, pool.shape[1]), pool.dtype)


def recipe_alpha(candidate: Any, pool: Any, *, threshold: Any = None, level: float = 0.01) -> jax.Array:
    r"""α̂ of a model's values against a reference pool of models' values, when the values are not aligned.

    For scores, the candidate and the reference are evaluated on the *same* test points; here they are not: the
    candidate is any set of ``m`` numbers describing one model (the ``d`` eigenvalues of its weights ``WᵀW/h``, the
    eigenvalues of its CK or NTK, ...) and the reference pools the same numbers of ``R`` models trained by one
    recipe (their eCDFs averaged). The answer is the exact :func:`alpha_hat` of the candidate against the pooled
    values: the smallest ``α`` such that some ``α``-trimming of the candidate's distribution is within ``δ`` of
    the pool in KS distance.

    Threshold ``δ``:

    * ``None`` (default): ``ks_threshold(m, n, level)`` (DKW, effective size ``2mn/(m + n)``) where ``n`` is the
      number of values of **one** pool model (``pool.shape[-1]``), not the pooled count ``R n`` — the convention
      :func:`ks_threshold` uses for pooled ensembles. Conservative: the pooled reference is less noisy than one
      model, and eigenvalues are not i.i.d.
    * ``"pool"``: :func:`pool_threshold` — the largest leave-one-out KS distance inside the pool, a threshold
      calibrated on how different the recipe's own models are (needs ``R >= 2``). Recommended for spectra.
    * a number in ``(0, 1]``.

    Scale: KS distances, and hence α̂, are invariant under any strictly increasing map applied to candidate and
    pool alike, so eigenvalues and log-eigenvalues give the same α̂ (positive spectra); logs only matter for
    plotting or for non-KS distances. Zero eigenvalues (rank-deficient matrices) are ordinary tied values.

    Args:
      candidate: ``(m,)`` values of the model under test.
      pool: ``(n,)`` reference values, or ``(R, n)`` values of ``R`` reference models (pooled).
      threshold: ``None``, ``"pool"`` or a number in ``(0, 1]``.
      level: error level of the default threshold, in ``(0, 1)``.

    Returns:
      Scalar α̂ in ``[0, 1]`` in the common floating dtype.

    Raises:
      ValueError: empty/NaN/inf inputs, wrong ranks, a bad threshold or level, too few values for the default
        threshold.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> pool = jnp.linspace(0.0, 1.0, 101)[None, :] + jnp.array([[0.0], [0.001]])   # two "models"
      >>> cand = jnp.concatenate([jnp.linspace(0.0, 1.0, 75), jnp.full(25, 5.0)])    # 25% outliers
      >>> round(float(recipe_alpha(cand, pool, threshold=0.05)), 4)
      0.2176
    """
    c = _check_candidate(candidate)
    p = _check_pool(pool)
    c, p = exact_order([(candidate, c), (pool, p)])
    check_probability(level, "level")
    dtype = accumulation_dtype(c, p)
    c, p = c.astype(dtype), p.astype(dtype)
    delta = _resolve(threshold, level, c.shape[0], p)
    return _alpha_and_ks(c, p, delta)[0]


@dataclasses.dataclass(frozen=True)
class RecipeIdentification:
    """Result of :func:`identify_recipe` (host-side; ``recipes`` in the order of the ``pools`` mapping).

    Attributes:
      recipe: the identified recipe (smallest α̂; ties broken by the KS distance at α = 0).
      index: its position in ``recipes``.
      recipes: the recipe names.
      alpha: ``(K,)`` α̂ of the candidate against each recipe's pool.
      ks: ``(K,)`` untrimmed KS distance against each pool.
      threshold: ``(K,)`` the threshold used for each pool.
    """

    recipe: str
    index: int
    recipes: tuple[str, ...]
    alpha: np.ndarray
    ks: np.ndarray
    threshold: np.ndarray


def _check_pools(pools: Any) -> dict[str, jax.Array]:
    if not isinstance(pools, Mapping) or len(pools) == 0:
        raise TypeError(f"pools must be a non-empty mapping recipe name -> (R, n) values, got {type(pools).__name__}.")
    out = {}
    for name, p in pools.items():
        if not isinstance(name, str):
            raise TypeError(f"pools keys must be recipe names (str), got {name!r}.")
        out[name] = _check_pool(p, f"pools[{name!r}]")
    return out


def _thresholds(pools: dict[str, jax.Array], m: int, threshold: Any, level: float, dtype) -> list[jax.Array]:
    return [_resolve(threshold, level, m, p.astype(dtype)) for p in pools.values()]


def _decide(alpha: np.ndarray, ks: np.ndarray) -> int:
    return int(np.lexsort((ks, alpha))[0])


def identify_recipe(
    candidate: Any, pools: Mapping[str, Any], *, threshold: Any = None, level: float = 0.01
) -> RecipeIdentification:
    r"""Which recipe trained this model? The recipe whose reference pool the candidate is least atypical of.

    For each recipe ``k`` with pool ``P_k`` (``R_k`` models' values), ``α̂_k = recipe_alpha(candidate, P_k)``;
    the answer is ``argmin_k α̂_k``, ties (e.g. α̂ = 0 for several recipes when the threshold is loose) broken by
    the smaller untrimmed KS distance ``sup |F_c − F_{P_k}|``. With ``threshold="pool"`` each recipe gets its own
    calibrated threshold (:func:`pool_threshold`), so α̂_k measures how much of the candidate lies outside the
    spread of recipe ``k``'s own models.

    Args:
      candidate: ``(m,)`` values of the model (e.g. eigenvalues of ``WᵀW/h``).
      pools: mapping recipe name → ``(R_k, n_k)`` (or ``(n_k,)``) reference values.
      threshold: ``None`` (DKW, see :func:`recipe_alpha`), ``"pool"`` or a number in ``(0, 1]``.
      level: error level of the default threshold.

    Returns:
      :class:`RecipeIdentification`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> pools = {"narrow": rng.normal(0, 1, (4, 200)), "wide": rng.normal(0, 3, (4, 200))}
      >>> identify_recipe(rng.normal(0, 3, 200), pools, threshold="pool").recipe
      'wide'

    References:
      Sarwate (2025), lectures on comparing trained models (α̂ beyond scores; recipe forensics).
    """
    c = _check_candidate(candidate)
    ps = _check_pools(pools)
    ordered = exact_order([(candidate, c)] + [(pools[name], p) for name, p in ps.items()])
    c, ps = ordered[0], dict(zip(ps, ordered[1:]))
    check_probability(level, "level")
    dtype = accumulation_dtype(c, *ps.values())
    c = c.astype(dtype)
    deltas = _thresholds(ps, c.shape[0], threshold, level, dtype)
    res = [_alpha_and_ks(c, p.astype(dtype), dl) for p, dl in zip(ps.values(), deltas)]
    alpha = np.asarray([float(a) for a, _ in res])
    ks = np.asarray([float(k) for _, k in res])
    idx = _decide(alpha, ks)
    names = tuple(ps)
    return RecipeIdentification(
        recipe=names[idx],
        index=idx,
        recipes=names,
        alpha=alpha,
        ks=ks,
        threshold=np.asarray([float(dl) for dl in deltas]),
    )


@dataclasses.dataclass(frozen=True)
class IdentificationReport:
    """Result of :func:`evaluate_identification`.

    Attributes:
      recipes: recipe names (rows: true recipe, columns: identified recipe).
      confusion: ``(K, K)`` int counts.
      accuracy: fraction of candidates identified correctly.
      predicted: mapping true recipe → ``(S_k,)`` int indices of the identified recipes.
      alpha: mapping true recipe → ``(S_k, K)`` α̂ against every pool.
    """

    recipes: tuple[str, ...]
    confusion: np.ndarray
    accuracy: float
    predicted: dict
    alpha: dict

    def table(self) -> str:
        """The confusion matrix as plain text (rows true, columns identified)."""
        w = max(len(r) for r in self.recipes) + 2
        lines = ["true \\ identified".ljust(w) + "".join(r.rjust(w) for r in self.recipes)]
        for r, row in zip(self.recipes, self.confusion):
            lines.append(r.ljust(w) + "".join(str(int(v)).rjust(w) for v in row))
        return "\n".join(lines)


def evaluate_identification(
    candidates: Mapping[str, Any], pools: Mapping[str, Any], *, threshold: Any = None, level: float = 0.01
) -> IdentificationReport:
    r"""Accuracy and confusion matrix of :func:`identify_recipe` on held-out models of known recipes.

    Protocol: ``pools[k]`` holds the values of the reference models of recipe ``k`` (e.g. seeds ``0..R−1``);
    ``candidates[k]`` holds models of the same recipe trained with **other** seeds (held out: no candidate may
    be a pool member, which this function cannot check — keep the seeds disjoint). Every candidate row is
    identified against all pools; ``confusion[i, j]`` counts candidates of recipe ``i`` identified as ``j``.

    Args:
      candidates: mapping true recipe name → ``(S_k, m)`` values of ``S_k`` held-out models (every key must be a
        key of ``pools``).
      pools: mapping recipe name → ``(R_k, n_k)`` reference values.
      threshold, level: as in :func:`identify_recipe`.

    Returns:
      :class:`IdentificationReport`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> pools = {"a": rng.normal(0, 1, (3, 100)), "b": rng.normal(1, 1, (3, 100))}
      >>> held = {"a": rng.normal(0, 1, (2, 100)), "b": rng.normal(1, 1, (2, 100))}
      >>> rep = evaluate_identification(held, pools, threshold="pool")
      >>> rep.accuracy, rep.confusion.tolist()
      (1.0, [[2, 0], [0, 2]])
    """
    ps = _check_pools(pools)
    if not isinstance(candidates, Mapping) or len(candidates) == 0:
        raise TypeError("candidates must be a non-empty mapping true recipe name -> (S, m) values.")
    names = tuple(ps)
    check_probability(level, "level")
    conf = np.zeros((len(names), len(names)), np.int64)
    predicted, alphas = {}, {}
    checked = {}
    for true, vals in candidates.items():
        if true not in ps:
            raise ValueError(f"candidates key {true!r} is not a recipe of pools {list(names)}.")
        v = check_array(vals, f"candidates[{true!r}]", ndim=2)
        if not is_concrete(v):
            raise TypeError("evaluate_identification needs concrete candidate values (not traced).")
        checked[true] = v
    ordered = exact_order([(pools[n], p) for n, p in ps.items()] + [(candidates[t], v) for t, v in checked.items()])
    ps = dict(zip(ps, ordered[: len(ps)]))
    checked = dict(zip(checked, ordered[len(ps) :]))
    for true, v in checked.items():
        dtype = accumulation_dtype(v, *ps.values())
        deltas = _thresholds(ps, v.shape[1], threshold, level, dtype)
        out = [
            jax.vmap(partial(_alpha_and_ks_fixed, p.astype(dtype), dl))(v.astype(dtype))
            for p, dl in zip(ps.values(), deltas)
        ]
        a = np.stack([np.asarray(o[0]) for o in out], axis=1)
        k = np.stack([np.asarray(o[1]) for o in out], axis=1)
        pred = np.asarray([_decide(ai, ki) for ai, ki in zip(a, k)], np.int64)
        i = names.index(true)
        np.add.at(conf[i], pred, 1)
        predicted[true], alphas[true] = pred, a
    acc = float(np.trace(conf) / conf.sum())
    return IdentificationReport(recipes=names, confusion=conf, accuracy=acc, predicted=predicted, alpha=alphas)
