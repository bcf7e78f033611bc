r"""Bootstrap confidence intervals for calibration errors (binned ECE and smooth ECE).

``B`` resamples of the ``n`` points drawn with replacement, the statistic ``θ*_b`` recomputed on each (for the smooth
ECE including its bandwidth fixed point), and with ``q_a`` the ``a``-quantile of the replicates (``jnp.quantile``,
linear interpolation as NumPy's default):

* ``method="basic"`` (default; relplot's choice, ``scipy.stats.bootstrap(method="basic")``):
  ``[2θ̂ - q_{(1+level)/2}, 2θ̂ - q_{(1-level)/2}]``, clipped at 0. Calibration errors are biased upwards (noise looks
  like miscalibration, more so in a resample with duplicated points); the basic interval subtracts that bias, so for
  a well-calibrated model it can lie below the estimate.
* ``method="percentile"``: ``[q_{(1-level)/2}, q_{(1+level)/2}]``, the sampling spread of the estimator itself.

Replicate ``b`` uses the ``b``-th key of ``jax.random.split(key, n_boot)``, so the same key gives the same interval
whatever ``batch_size``. Resamples run in ``jax.lax.map`` chunks of ``batch_size`` (vmapped inside a chunk).

References:
  B. Efron, R. Tibshirani. "An Introduction to the Bootstrap", ch. 13, 1993; A. C. Davison, D. V. Hinkley,
  "Bootstrap Methods and their Application", §5.2 (basic interval), 1997.
  J. Błasiok, P. Nakkiran. "Smooth ECE", ICLR 2024.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_choice, check_flag, check_float, check_int, check_key, check_probability
from ._calibration import _BINNINGS, _check_probs, _ece
from ._smooth_ece import _check_binary_or_top, _smooth_ece_core

__all__ = ["BootstrapInterval", "ece_interval", "smooth_ece_interval"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["estimate", "lower", "upper"],
    meta_fields=["n_boot", "level", "method"],
)
@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
    """A point estimate with a bootstrap confidence interval (see the module docstring for the methods).

    Attributes:
      estimate: the statistic on the full sample.
      lower: lower end of the interval.
      upper: upper end of the interval.
      n_boot: number of resamples (static).
      level: confidence level (static).
      method: ``"basic"`` or ``"percentile"`` (static).
    """

    estimate: jax.Array
    lower: jax.Array
    upper: jax.Array
    n_boot: int
    level: float
    method: str


METHODS = ("basic", "percentile")


def _check_boot(key: Any, n_boot: Any, level: Any, method: Any, batch_size: Any):
    key = check_key(key)
    n_boot = check_int(n_boot, "n_boot", min=2)
    check_probability(level, "level")
    check_choice(method, "method", METHODS)
    return key, n_boot, float(level), method, check_int(batch_size, "batch_size", min=1)


def _interval(stat, key, arrays, params, n_boot, level, method, batch_size) -> BootstrapInterval:
    est, lo, hi = _bootstrap(stat, key, arrays, params, n_boot, level, method, batch_size)
    return BootstrapInterval(estimate=est, lower=lo, upper=hi, n_boot=n_boot, level=level, method=method)


@partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7))
def _bootstrap(
    stat: Callable,
    key: jax.Array,
    arrays: tuple,
    params: tuple,
    n_boot: int,
    level: float,
    method: str,
    batch_size: int,
):
    """``stat(*arrays, *params)`` on the sample and its bootstrap interval over ``n_boot`` row resamples."""
    n = arrays[0].shape[0]

    def one(k):
        idx = jax.random.randint(k, (n,), 0, n, dtype=jnp.int32)  # 32-bit: the same resamples with or without x64
        return stat(*(a[idx] for a in arrays), *params)

    reps = lax.map(one, jax.random.split(key, n_boot), batch_size=min(batch_size, n_boot))
    q = jnp.asarray([(1 - level) / 2, (1 + level) / 2], reps.dtype)
    q_lo, q_hi = jnp.quantile(reps, q)
    est = stat(*arrays, *params)
    if method == "percentile":
        return est, q_lo, q_hi
    return est, jnp.maximum(2 * est - q_hi, 0), jnp.maximum(2 * est - q_lo, 0)


def ece_interval(
    key: Any,
    probs: Any,
    labels: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    method: str = "basic",
    n_bins: int = 15,
    binning: str = "uniform",
    classwise: bool = False,
    batch_size: int = 100,
) -> BootstrapInterval:
    """Binned ECE (:func:`jaxcompare.ece`) with a bootstrap confidence interval.

    Args:
      key: ``jax.random.key`` for the resamples.
      probs: ``(n, C)`` probabilities.
      labels: ``(n,)`` labels in ``[0, C)``.
      n_boot: number of resamples ``B >= 2``.
      level: confidence level in ``(0, 1)``.
      method: ``"basic"`` (bias-corrected, default) or ``"percentile"`` (module docstring).
      n_bins, binning, classwise: as :func:`jaxcompare.ece`.
      batch_size: resamples computed together (memory ``~ batch_size * n * C``).

    Returns:
      :class:`BootstrapInterval`; ``estimate`` equals ``ece(probs, labels, ...)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p1 = jax.random.uniform(jax.random.key(0), (500,))
      >>> y = (jax.random.uniform(jax.random.key(1), (500,)) < p1 ** 2).astype(int)   # over-confident
      >>> res = ece_interval(jax.random.key(2), jnp.stack([1 - p1, p1], 1), y, n_boot=200, classwise=True)
      >>> bool(res.lower < 1 / 6 < res.upper), res.n_boot, res.method    # population value: 1/6
      (True, 200, 'basic')
    """
    key, n_boot, level, method, batch_size = _check_boot(key, n_boot, level, method, batch_size)
    n_bins = check_int(n_bins, "n_bins", min=1)
    check_choice(binning, "binning", _BINNINGS)
    p, y = _check_probs(probs, labels)
    return _interval(
        _ece, key, (p, y), (n_bins, binning, check_flag(classwise, "classwise")), n_boot, level, method, batch_size
    )


def _smooth_stat(f: jax.Array, y: jax.Array, eps: float) -> jax.Array:
    return _smooth_ece_core(f, y, jnp.asarray(eps, f.dtype))[0]


def smooth_ece_interval(
    key: Any,
    probs: Any,
    labels: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    method: str = "basic",
    eps: float = 1e-3,
    batch_size: int = 8,
) -> BootstrapInterval:
    """Smooth ECE (:func:`jaxcompare.smooth_ece`) with a bootstrap confidence interval (relplot reports the same
    basic interval, from 100 resamples).

    Every resample recomputes the bandwidth fixed point: about 12 passes over the ``n`` points and 11 FFTs. Inside a
    vmapped chunk both bandwidth branches (the shared ``σ ≥ 0.01`` grid and the larger one) run at every step;
    ``batch_size=1`` avoids that and can be faster for ``σ* ≥ 0.01`` on CPU.

    Args:
      key: ``jax.random.key`` for the resamples.
      probs: ``(n,)`` probabilities of class 1 (labels 0/1) or ``(n, C)`` probabilities (top-label).
      labels: ``(n,)`` labels.
      n_boot: number of resamples ``B >= 2``.
      level: confidence level in ``(0, 1)``.
      method: ``"basic"`` (bias-corrected, default) or ``"percentile"`` (module docstring).
      eps: as :func:`jaxcompare.smooth_ece`.
      batch_size: resamples computed together.

    Returns:
      :class:`BootstrapInterval`; ``estimate`` equals ``smooth_ece(probs, labels, eps=eps)``.

    Example:
      >>> import jax
      >>> f = jax.random.uniform(jax.random.key(0), (1000,))
      >>> y = (jax.random.uniform(jax.random.key(1), (1000,)) < f).astype(int)   # calibrated
      >>> res = smooth_ece_interval(jax.random.key(2), f, y, n_boot=100)
      >>> bool(res.lower < res.upper < 0.06)
      True
    """
    key, n_boot, level, method, batch_size = _check_boot(key, n_boot, level, method, batch_size)
    f, y = _check_binary_or_top(probs, labels)
    check_float(eps, "eps", low=0.0, high=1.0, high_open=True)
    return _interval(_smooth_stat, key, (f, y), (float(eps),), n_boot, level, method, batch_size)
