"""Vectorized Clauset–Shalizi–Newman power-law tail fit with a bootstrap goodness-of-fit p-value."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import at_least_float32, check_array, check_choice, check_int, check_key, is_concrete

__all__ = ["PowerLawFit", "PowerLawGOF", "powerlaw_fit", "powerlaw_gof"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`powerlaw_fit` (arrays carry any batch axes of the input).

    Attributes:
      alpha: MLE exponent ``α`` of the density ``p(x) ∝ x^{-α}``, ``x ≥ xmin``.
      xmin: chosen lower cutoff.
      sigma: standard error ``(α − 1)/√n_tail``.
      ks: Kolmogorov–Smirnov distance of the tail to the fitted law.
      n_tail: number of points ``≥ xmin``.
    """

    alpha: jax.Array
    xmin: jax.Array
    sigma: jax.Array
    ks: jax.Array
    n_tail: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PowerLawGOF:
    """Result of :func:`powerlaw_gof`: the fit, the bootstrap p-value and the bootstrap KS distances."""

    fit: PowerLawFit
    p_value: jax.Array
    ks_boot: jax.Array


def _candidates(n: int, min_tail: int, max_candidates: int | None) -> np.ndarray:
    last = n - min_tail  # the last admissible xmin index keeps min_tail points
    idx = np.arange(last + 1)
    if max_candidates is not None and idx.size > max_candidates:
        idx = np.unique(np.round(np.linspace(0, last, max_candidates)).astype(int))
    return idx


KS_CONVENTIONS = ("data", "sup")
MIN_DISTINCT = 3


def _fit_sorted(xs: jax.Array, cand: np.ndarray, block: int, ks: str) -> PowerLawFit:
    """Scan over candidate xmin indices ``cand`` for an ascending 1-D array ``xs`` (all positive).

    Ties: a candidate ``x_i`` starts its tail at the first index holding that value (the tail is every point
    ``≥ xmin``), and the empirical CDF of a tied block jumps once (left/right ranks by ``searchsorted``).
    """
    n = xs.shape[0]
    logx = jnp.log(xs)
    rev_cum = jnp.cumsum(logx[::-1])[::-1]  # Σ_{j≥i} ln x_j
    ci = jnp.searchsorted(xs, xs[jnp.asarray(cand)], side="left")
    n_i = (n - ci).astype(xs.dtype)
    denom = rev_cum[ci] - n_i * logx[ci]
    # a tail whose mean log-spread is at rounding level (e.g. equal singular values of an orthogonal matrix) has no
    # exponent: α would be ~1/eps
    ok = denom > n_i * (64 * jnp.finfo(xs.dtype).eps)
    alpha = jnp.where(ok, 1 + n_i / jnp.where(ok, denom, 1), jnp.nan)
    j = jnp.arange(n)
    below = jnp.searchsorted(xs, xs, side="left")  # #{x < x_j}
    upto = jnp.searchsorted(xs, xs, side="right")  # #{x ≤ x_j}

    def ks_one(args):
        i, a, ni = args
        in_tail = j >= i
        # F(x_j) = 1 − (x_j / x_i)^{1−α}, computed in logs
        F = 1 - jnp.exp((1 - a) * (logx - logx[i]))
        d = jnp.abs(F - (below - i).astype(xs.dtype) / ni)  # at the data points: F̂(x_j⁻) (plfit, `powerlaw`)
        if ks == "sup":
            d = jnp.maximum(d, jnp.abs(F - (upto - i).astype(xs.dtype) / ni))  # and F̂(x_j): the supremum
        return jnp.max(jnp.where(in_tail, d, 0.0))

    D = jax.lax.map(ks_one, (ci, jnp.where(ok, alpha, 2.0), n_i), batch_size=block)
    D = jnp.where(ok, D, jnp.inf)
    best = jnp.argmin(D)
    any_ok = jnp.any(ok)  # False only for degenerate samples, refused eagerly; under tracing: NaN fields
    nan = jnp.asarray(jnp.nan, xs.dtype)
    a = jnp.where(any_ok, alpha[best], nan)
    nt = n_i[best]
    return PowerLawFit(
        alpha=a,
        xmin=jnp.where(any_ok, xs[ci[best]], nan),
        sigma=(a - 1) / jnp.sqrt(nt),
        ks=jnp.where(any_ok, D[best], nan),
        n_tail=jnp.where(any_ok, nt, 0).astype(jnp.int32),
    )


def _check_sample(x, name: str, min_tail: int) -> jax.Array:
    x = at_least_float32(check_array(x, name, ndim=1))  # counts, log-sums and rank steps: not in float16/bfloat16
    if x.shape[0] < min_tail:
        raise ValueError(f"{name} needs at least min_tail = {min_tail} points, got {x.shape[0]}.")
    if is_concrete(x) and bool(jnp.any(x <= 0)):
        raise ValueError(
            f"{name} must be positive (a power law lives on x > 0); drop zeros first, "
            "e.g. eigenvalues[eigenvalues > 0]."
        )
    if is_concrete(x):
        n_distinct = int(np.unique(np.asarray(x)).size)
        if n_distinct < MIN_DISTINCT:
            raise ValueError(
                f"{name} has {n_distinct} distinct value(s); a power-law tail fit needs at least {MIN_DISTINCT} "
                "(constant data have no tail: the MLE exponent would be infinite)."
            )
    return x


def _check_fitted(fit: PowerLawFit) -> PowerLawFit:
    """Eagerly, a sample whose every candidate tail has no log-spread beyond rounding is an error, not NaN."""
    if is_concrete(fit.n_tail) and fit.n_tail.ndim == 0 and int(fit.n_tail) == 0:
        raise ValueError(
            "x has no admissible tail: every candidate tail is (numerically) constant, so the MLE exponent is "
            "infinite; a power-law fit needs spread-out values."
        )
    return fit


@partial(jax.jit, static_argnames=("min_tail", "max_candidates", "block", "ks"))
def _fit(x, min_tail, max_candidates, block, ks):
    return _fit_sorted(jnp.sort(x), _candidates(x.shape[0], min_tail, max_candidates), block, ks)


def powerlaw_fit(
    x, *, ks: str = "data", min_tail: int = 10, max_candidates: int | None = 2000, block: int = 64
) -> PowerLawFit:
    r"""Clauset–Shalizi–Newman fit of a power-law tail ``p(x) ∝ x^{-α}`` for ``x ≥ xmin``.

    For each candidate ``xmin = x_i`` of the ascending sample, with ``n_i`` points in the tail (Clauset et al.
    2009, eq. 3.1, and the Kolmogorov–Smirnov distance of §3.3),

    .. math:: α_i = 1 + n_i \Big/ \sum_{j ≥ i} \ln(x_j / x_i),\qquad
              D_i = \max_{j ≥ i} \big|F_i(x_j) - \hat F_i(x_j^-)\big|,\quad F_i(x) = 1 - (x/x_i)^{1 - α_i}

    where ``F̂_i(x_j⁻) = (j − i)/n_i`` is the empirical CDF of the tail just below its ``(j − i)``-th point; the fit
    takes the ``i`` minimizing ``D_i``, and ``σ = (α − 1)/√n_tail``.

    Two conventions for ``D``:

    - ``ks="data"`` (default, the reference): the distance at the data points as above — what Clauset's ``plfit``
      (``cx = (0:n-1)/n``) and the ``powerlaw`` package (Alstott et al. 2014) compute, so xmin, α and n_tail match
      theirs (``benchmarks/bench_spectra.py``).
    - ``ks="sup"``: the two-sided supremum ``max_j max(|F − F̂(x_j⁻)|, |F − F̂(x_j)|)``, the exact
      Kolmogorov–Smirnov statistic (``scipy.stats.kstest`` of the tail). It is ≥ the data-point distance by up to
      ``1/n_i``, which penalizes short tails, so it tends to choose a lower xmin and a longer tail.

    At the same xmin both give the same α. Ties: the tail is every point ``≥ xmin`` and a tied block is one step of
    ``F̂``. The scan is vectorized (``lax.map`` in blocks, memory ``O(block · N)``); with ``max_candidates`` the
    candidates are evenly spaced ranks, so the cost is ``O(N · max_candidates)`` — about a second for ``N = 10⁶``.

    Args:
      x: ``(N,)`` positive sample (e.g. nonzero eigenvalues) with at least 3 distinct values.
      ks: ``"data"`` or ``"sup"`` (above).
      min_tail: smallest admissible tail size (≥ 2).
      max_candidates: cap on the number of xmin candidates (``None``: every sample point).
      block: candidates per vectorized block.

    Returns:
      :class:`PowerLawFit` (0-d arrays). ``vmap`` over a batch of samples works; under ``jit``/``vmap`` the values
      of ``x`` cannot be checked, and a sample without any admissible tail (constant) gives NaN fields and
      ``n_tail = 0`` instead of the eager ``ValueError``.

    Raises:
      ValueError: ``x`` not 1-D, not finite, not positive, shorter than ``min_tail``, with fewer than 3 distinct
        values, or with no candidate tail whose mean ``ln(x_j/x_i)`` exceeds 64 ulps (constant data, or values equal
        up to rounding, have no tail: α would be infinite or ~1/eps); ``ks`` not one of the conventions.

    Example:
      >>> x = jax.random.pareto(jax.random.key(0), 1.5, (2000,))  # density ∝ x^{-2.5}, x ≥ 1
      >>> fit = powerlaw_fit(x)
      >>> bool(abs(fit.alpha - 2.5) < 5 * fit.sigma)
      True

    References:
      A. Clauset, C. R. Shalizi, M. E. J. Newman, *Power-law distributions in empirical data*, SIAM Review 51 (2009).
      J. Alstott, E. Bullmore, D. Plenz, *powerlaw: a Python package for analysis of heavy-tailed distributions*,
      PLoS ONE 9 (2014).
    """
    ks = check_choice(ks, "ks", KS_CONVENTIONS)
    min_tail = check_int(min_tail, "min_tail", min=2)
    if max_candidates is not None:
        max_candidates = check_int(max_candidates, "max_candidates", min=1)
    block = check_int(block, "block", min=1)
    x = _check_sample(x, "x", min_tail)
    return _check_fitted(_fit(x, min_tail, max_candidates, block, ks))


@partial(jax.jit, static_argnames=("n_boot", "min_tail", "max_candidates", "block", "ks"))
def _gof(key, x, n_boot, min_tail, max_candidates, block, ks):
    xs = jnp.sort(x)
    n = xs.shape[0]
    cand = _candidates(n, min_tail, max_candidates)
    fit = _fit_sorted(xs, cand, block, ks)
    n_below = n - fit.n_tail
    p_tail = fit.n_tail / n

    def one(k):
        k1, k2, k3 = jax.random.split(k, 3)
        from_tail = jax.random.uniform(k1, (n,), xs.dtype) < p_tail
        u = jax.random.uniform(k2, (n,), xs.dtype)
        synth_tail = fit.xmin * (1 - u) ** (-1 / (fit.alpha - 1))
        idx = jnp.minimum(jnp.floor(jax.random.uniform(k3, (n,), xs.dtype) * n_below).astype(jnp.int32), n_below - 1)
        synth_body = xs[jnp.maximum(idx, 0)]
        s = jnp.sort(jnp.where(from_tail | (n_below == 0), synth_tail, synth_body))
        return _fit_sorted(s, cand, block, ks).ks

    ks_boot = jax.lax.map(one, jax.random.split(key, n_boot))
    return PowerLawGOF(fit=fit, p_value=jnp.mean((ks_boot >= fit.ks).astype(ks_boot.dtype)), ks_boot=ks_boot)


def powerlaw_gof(
    key,
    x,
    *,
    n_boot: int = 100,
    ks: str = "data",
    min_tail: int = 10,
    max_candidates: int | None = 500,
    block: int = 64,
) -> PowerLawGOF:
    """Bootstrap goodness-of-fit p-value of the power-law hypothesis (Clauset, Shalizi & Newman 2009, §4.1).

    Each of ``n_boot`` synthetic samples of size ``N`` draws, with probability ``n_tail/N``, a point from the fitted
    power law above ``xmin`` (``x = xmin (1 − u)^{−1/(α−1)}``) and otherwise a point resampled from the data below
    ``xmin``; the full fit (including the xmin scan, same ``ks`` convention) is redone on each, and
    ``p = P(D_synthetic ≥ D_observed)``.
    Small ``p`` (< 0.1) rejects the power law. The standard error of ``p`` is ``√(p(1−p)/n_boot)``.

    Args:
      key: PRNG key.
      x: ``(N,)`` positive sample.
      n_boot: number of bootstrap samples.
      ks, min_tail, max_candidates, block: as in :func:`powerlaw_fit` (a smaller default candidate cap keeps the
        bootstrap cheap).

    Returns:
      :class:`PowerLawGOF`.

    Example:
      >>> x = jax.random.pareto(jax.random.key(0), 1.5, (500,))
      >>> gof = powerlaw_gof(jax.random.key(1), x, n_boot=20)
      >>> gof.ks_boot.shape
      (20,)
    """
    key = check_key(key)
    n_boot = check_int(n_boot, "n_boot", min=1)
    ks = check_choice(ks, "ks", KS_CONVENTIONS)
    min_tail = check_int(min_tail, "min_tail", min=2)
    if max_candidates is not None:
        max_candidates = check_int(max_candidates, "max_candidates", min=1)
    block = check_int(block, "block", min=1)
    x = _check_sample(x, "x", min_tail)
    out = _gof(key, x, n_boot, min_tail, max_candidates, block, ks)
    _check_fitted(out.fit)
    return out
