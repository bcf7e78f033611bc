"""The published bootstrap protocol: alpha-hat of many candidate models against a pooled reference ensemble."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_range, traced_result
from .._results import Result, report_result
from .._validation import (
    REQUIRED,
    at_least_float32,
    check_array,
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_key,
    device_reduce,
    is_concrete,
    key_first,
    spans_processes,
)
from ._common import exact_order, resolve_threshold
from ._core import make_grid, solve_alpha_hat, trimmed_distance

__all__ = ["ensemble_alpha_hat", "EnsembleAlphaResult", "bootstrap_halves", "grid_alpha", "PUBLISHED_ALPHA_GRID"]

#: Trimming levels searched by the published code (13 levels); ``alpha >= 0.5`` was reported as 0.5.
PUBLISHED_ALPHA_GRID = (0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnsembleAlphaResult:
    """Result of :func:`ensemble_alpha_hat` (``M`` candidates, ``B`` bootstrap rounds).

    Attributes:
      alpha_hat: ``(M,)`` mean of the exact alpha-hat over rounds, in the order of ``candidates``.
      boot: ``(M, B)`` alpha-hat of each candidate in each round (the bootstrap distribution).
      ks: ``(M, B)`` untrimmed two-sample KS distance of each candidate in each round.
      threshold: scalar KS threshold ``delta`` used.
      converged: ``(M, B)`` whether the exact solver finished before its (never binding) iteration cap.
      sample_size: points per half-sample ``n`` (static).
      result: ``(M,)`` int32 :class:`jaxcompare.Result` code per candidate: ``successful``, or
        ``max_steps_reached`` if the solver hit its cap in some round (the solver's bound of ``m + 2`` steps makes
        that a bug report, not an expected outcome).
    """

    alpha_hat: jax.Array
    boot: jax.Array
    ks: jax.Array
    threshold: jax.Array
    converged: jax.Array
    sample_size: int = dataclasses.field(metadata=dict(static=True))
    result: jax.Array | None = None


def bootstrap_halves(key: Any, n_test: int, sample_size: int) -> tuple[jax.Array, jax.Array]:
    """Index draws of one bootstrap round: two resamples from disjoint halves of the test set.

    The ``n_test`` test indices are randomly split into two disjoint halves of ``n_test // 2``; ``x1`` and ``x2``
    each draw ``sample_size`` indices with replacement from their own half, so the candidate sample (on ``x1``) and
    the reference sample (on ``x2``) share no test point and are independent given the models.

    Args:
      key: PRNG key.
      n_test: number of test points ``T >= 2``.
      sample_size: draws per half, ``n``.

    Returns:
      ``(x1, x2)``, two ``(sample_size,)`` int arrays of test indices.

    Example:
      >>> import jax
      >>> x1, x2 = bootstrap_halves(jax.random.key(0), 10, 5)
      >>> bool(set(x1.tolist()).isdisjoint(x2.tolist()))
      True
    """
    key = check_key(key)
    n_test = check_int(n_test, "n_test", min=2)
    sample_size = check_int(sample_size, "sample_size", min=1)
    return _bootstrap_halves(key, n_test, sample_size)


def _bootstrap_halves(key: jax.Array, n_test: int, sample_size: int) -> tuple[jax.Array, jax.Array]:
    k_perm, k1, k2 = jax.random.split(key, 3)
    half = n_test // 2
    # 32-bit draws: the same halves with jax_enable_x64 on or off (float64/int64 draws consume other bits)
    perm = jnp.argsort(jax.random.uniform(k_perm, (n_test,), jnp.float32))  # a uniform random permutation
    x1 = perm[:half][jax.random.randint(k1, (sample_size,), 0, half, dtype=jnp.int32)]
    x2 = perm[half : 2 * half][jax.random.randint(k2, (sample_size,), 0, half, dtype=jnp.int32)]
    return x1, x2


def _check_models(idx: Any, name: str, n_models: int) -> np.ndarray:
    if not is_concrete(idx):
        raise TypeError(f"{name} must be concrete model indices (not traced), got a tracer.")
    a = device_reduce(_same, idx) if spans_processes(idx) else np.asarray(idx)  # a few indices: replicated
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array of model indices (rows of scores), got shape {a.shape}."
        )
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer model indices, got dtype {a.dtype}.")
    if a.min() < 0 or a.max() >= n_models:
        raise ValueError(
            f"{name} must lie in [0, {n_models}) (rows of scores); found values from {a.min()} to {a.max()}."
        )
    if len(np.unique(a)) != a.size:
        raise ValueError(f"{name} must not repeat a model index.")
    return a


def _same(x: jax.Array) -> jax.Array:
    return x


def ensemble_alpha_hat(
    key: Any = REQUIRED,
    scores: Any = REQUIRED,
    /,
    *,
    candidates: Any,
    reference: Any,
    n_boot: int = 100,
    sample_size: int | None = None,
    threshold: Any = None,
    level: float = 0.01,
    method: str = "dkw",
    round_batch: int | None = 8,
    throw: bool = True,
    **deprecated: Any,
) -> EnsembleAlphaResult:
    r"""Exact alpha-hat of many candidate models against a reference ensemble, with the published bootstrap.

    Protocol (spec/trimming.md): the models are split into candidates and reference models. In each of ``n_boot``
    rounds, :func:`bootstrap_halves` draws ``x1`` and ``x2`` (``n`` indices each, from disjoint halves of the test
    set). A candidate's sample is its scores on ``x1``; the reference sample pools the reference models' scores on
    ``x2`` (the average of their eCDFs, ``R n`` points). Each candidate's exact alpha-hat (:func:`alpha_hat`) is
    computed per round; ``alpha_hat`` is the mean over rounds. Vectorised over candidates (``vmap``) and rounds
    (``lax.map`` in batches of ``round_batch``); the same key gives the same result.

    Args:
      key: PRNG key (``jax.random.key``), split into one key per round; the first positional argument
        (``ensemble_alpha_hat(scores, key=k, ...)`` still works for one release, with a ``DeprecationWarning``).
      scores: ``(K, T)`` scalar soft decisions (e.g. logit gaps) of ``K`` models on ``T`` test points. May be
        sharded over several devices, also a global array whose rows live on different processes under
        ``jax.distributed`` (``jax.make_array_from_process_local_data``; every process then makes the same call):
        the scores are gathered on every device, the candidates spread over the devices, and the (small) outputs
        replicated on every process; the results are bit-identical to one process (the rounds' draws depend on
        ``key`` only, and each candidate is solved alone). Value checks then run on the devices.
      candidates: ``(M,)`` row indices of the candidate models.
      reference: ``(R,)`` row indices of the reference models (disjoint from ``candidates``).
      n_boot: number of bootstrap rounds ``B`` (published: 100).
      sample_size: points per half-sample ``n``, at most ``T // 2`` (default ``T // 2``).
      threshold: KS threshold ``delta`` in ``(0, 1]``; default ``ks_threshold(n, n, level, method)`` — the
        published choice: both samples count ``n`` test points (the pooled reference repeats the same points).
      level: error level of the default threshold (published: 0.01).
      method: ``"dkw"`` or ``"asymptotic"`` for the default threshold.
      round_batch: at most this many rounds are evaluated at once (the largest divisor of ``n_boot`` not above it;
        memory ~ ``round_batch * M * n``); ``None`` = all rounds at once.
      throw: raise ``RuntimeError`` if the solver failed for some candidate (``result`` not ``successful``);
        ``False`` warns with :class:`jaxcompare.SolverWarning` and returns the flagged result (the package-wide
        convention, see :class:`jaxcompare.Result`).

    Returns:
      :class:`EnsembleAlphaResult` with ``alpha_hat (M,)``, ``boot (M, B)``, ``ks (M, B)``, ``threshold``,
      ``result (M,)``.

    Raises:
      ValueError: bad shapes or indices, NaN/inf scores, or too few test points for the default threshold
        (``sample_size`` below what ``level`` needs: the threshold would be ``>= 1`` and every candidate would get
        ``alpha_hat = 0``); the message gives the number of test points needed. Traced ``scores`` are checked for
        NaN/inf inside :func:`jaxcompare.checked` only.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> s = jax.random.normal(jax.random.key(1), (6, 200))
      >>> res = ensemble_alpha_hat(jax.random.key(0), s, candidates=jnp.arange(3), reference=jnp.arange(3, 6),
      ...                          n_boot=4)
      >>> res.alpha_hat.shape, res.boot.shape, res.result.tolist()
      ((3,), (3, 4), [0, 0, 0])
    """
    key, scores = key_first("ensemble_alpha_hat", (key, scores), deprecated, ("key", "scores"))
    s = check_array(scores, "scores", ndim=2)
    traced_finite(s, "scores")
    s = at_least_float32(exact_order([(scores, s)])[0])  # KS-type: the order of the scores (counts in float32)
    key = check_key(key)
    n_models, n_test = s.shape
    if n_test < 2:
        raise ValueError(f"scores needs at least 2 test points (columns) to split into halves, got {n_test}.")
    cand = _check_models(candidates, "candidates", n_models)
    ref = _check_models(reference, "reference", n_models)
    if np.intersect1d(cand, ref).size:
        raise ValueError(
            "candidates and reference must be disjoint sets of models; "
            f"shared indices: {np.intersect1d(cand, ref).tolist()}."
        )
    n_boot = check_int(n_boot, "n_boot", min=1)
    throw = check_flag(throw, "throw")
    sample_size = n_test // 2 if sample_size is None else check_int(sample_size, "sample_size", min=1, max=n_test // 2)
    if round_batch is not None:
        round_batch = check_int(round_batch, "round_batch", min=1)
    check_choice(method, "method", ("dkw", "asymptotic"))
    delta = resolve_threshold(threshold, level, sample_size, sample_size, method)
    delta = jnp.asarray(delta, s.dtype)
    if is_concrete(s) and len(s.sharding.device_set) > 1:  # sharded scores (e.g. a global array, jax.distributed)
        boot, ks, conv = _ensemble_spread(s, cand, ref, key, delta, n_boot, sample_size, round_batch)
    else:
        cand_s, ref_s = s[jnp.asarray(cand)], s[jnp.asarray(ref)]
        boot, ks, conv = _ensemble(cand_s, ref_s, key, delta, n_boot, sample_size, round_batch)
    result = jnp.where(jnp.all(conv, axis=1), int(Result.successful), int(Result.max_steps_reached)).astype(jnp.int32)
    res = EnsembleAlphaResult(
        alpha_hat=jnp.mean(boot, axis=1),
        boot=boot,
        ks=ks,
        threshold=delta,
        converged=conv,
        sample_size=sample_size,
        result=result,
    )
    traced_result(result, throw, "ensemble_alpha_hat")
    report_result(
        result,
        throw,
        lambda r: (
            f"ensemble_alpha_hat: the exact alpha-hat solver failed ({r.message}); please report this with the scores."
        ),
    )
    return res


@partial(jax.jit, static_argnums=(4, 5, 6))
def _ensemble(cand_scores, ref_scores, key, delta, n_boot, sample_size, round_batch):
    n_test = cand_scores.shape[1]
    dtype = cand_scores.dtype

    def one_candidate(sample, ref_sorted):
        grid = make_grid(sample, ref_sorted)
        sol = solve_alpha_hat(grid, delta, dtype)
        return sol.alpha, trimmed_distance(grid, jnp.asarray(1.0, dtype), dtype), sol.converged

    def one_round(k):
        x1, x2 = _bootstrap_halves(k, n_test, sample_size)
        ref_sorted = jnp.sort(ref_scores[:, x2].reshape(-1))
        return jax.vmap(one_candidate, in_axes=(0, None))(cand_scores[:, x1], ref_sorted)

    keys = jax.random.split(key, n_boot)
    batch = None
    if round_batch is not None and round_batch < n_boot:
        # a divisor of n_boot: lax.map would otherwise compile the round a second time for the remainder
        batch = max(d for d in range(1, round_batch + 1) if n_boot % d == 0)
    alpha, ks, conv = jax.lax.map(one_round, keys, batch_size=batch)
    return alpha.T, ks.T, conv.T


def _ensemble_spread(s, cand, ref, key, delta, n_boot, sample_size, round_batch):
    """:func:`_ensemble` with the candidates spread over the devices that hold ``scores`` (of every process).

    The scores are gathered on every device (``(K, T)``, small next to the work), each device solves its own
    candidates (padded to a multiple of the device count by repeating the first) for every round, and the small
    ``(M, B)`` outputs are replicated, so every process reads them. Every candidate's computation is the same as on
    one device (the rounds' draws depend on ``key`` only), hence the results are bit-identical across device and
    process counts.
    """
    devices = np.array(sorted(s.sharding.device_set, key=lambda d: d.id))
    mesh = jax.sharding.Mesh(devices, ("candidates",), axis_types=(jax.sharding.AxisType.Auto,))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("candidates"))
    padded = np.concatenate([cand, np.full(-cand.size % devices.size, cand[0])])
    run = jax.jit(_spread_program, static_argnums=(5, 6, 7, 8, 9), out_shardings=whole)
    return run(jax.device_put(s, whole), padded, ref, key, delta, n_boot, sample_size, round_batch, cand.size, spread)


def _spread_program(s, padded, ref, key, delta, n_boot, sample_size, round_batch, m, spread):
    cand_s = jax.lax.with_sharding_constraint(s[padded], spread)
    out = _ensemble(cand_s, s[ref], key, delta, n_boot, sample_size, round_batch)
    return tuple(a[:m] for a in out)


def grid_alpha(alpha: Any, grid: Any = PUBLISHED_ALPHA_GRID, cap: float = 0.5) -> jax.Array:
    """The answer a grid search over trimming levels would give, from the exact alpha-hat.

    ``d_alpha`` is non-increasing in ``alpha``, so the smallest grid level ``g`` with ``d_g <= delta`` is the smallest
    grid level ``>= alpha_hat``; ``cap`` is returned when none is (the published code reported ``>= 0.5`` as 0.5).

    Args:
      alpha: exact alpha-hat values in ``[0, 1]``, any shape (checked under ``jit`` in :func:`jaxcompare.checked`).
      grid: strictly increasing trimming levels in ``[0, 1]`` (default :data:`PUBLISHED_ALPHA_GRID`).
      cap: value in ``[0, 1]`` returned above the last level.

    Returns:
      Array of the shape of ``alpha``.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(a, 3) for a in grid_alpha(jnp.array([0.0, 0.03, 0.6])).tolist()]
      [0.0, 0.05, 0.5]
    """
    a = check_array(alpha, "alpha", min_size=0)
    g = check_array(grid, "grid", ndim=1).astype(a.dtype)
    check_float(cap, "cap", low=0.0, high=1.0)
    for name, v in (("alpha", a), ("grid", g)):
        if is_concrete(v) and v.size and (np.min(np.asarray(v)) < 0 or np.max(np.asarray(v)) > 1):
            raise ValueError(
                f"{name} must hold trimming levels in [0, 1]; found values from "
                f"{float(np.min(np.asarray(v))):g} to {float(np.max(np.asarray(v))):g}."
            )
        traced_range(v, name, 0.0, 1.0)
    if is_concrete(g) and np.any(np.diff(np.asarray(g)) <= 0):
        raise ValueError("grid must be strictly increasing.")
    pos = jnp.searchsorted(g, a, side="left")
    return jnp.where(pos < g.shape[0], g[jnp.minimum(pos, g.shape[0] - 1)], jnp.asarray(cap, a.dtype))
