"""Input checks shared by the public trimming functions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._checked import traced_finite, traced_range
from .._validation import check_array, check_float, check_probability
from ._threshold import ks_threshold


def check_samples(candidate: Any, reference: Any) -> tuple[jax.Array, jax.Array, Any]:
    """Two non-empty finite 1-D samples, promoted to a common floating dtype (finiteness of traced samples is
    checked in :func:`jaxcompare.checked` mode)."""
    c = check_array(candidate, "candidate", ndim=1)
    r = check_array(reference, "reference", ndim=1)
    traced_finite(c, "candidate")
    traced_finite(r, "reference")
    dtype = jnp.result_type(c.dtype, r.dtype)
    return c.astype(dtype), r.astype(dtype), dtype


def resolve_threshold(threshold: Any, level: Any, n: int, m: int, method: str = "dkw") -> Any:
    """``threshold`` checked to lie in (0, 1], or the default ``ks_threshold(n, m, level, method)``."""
    check_probability(level, "level")
    if threshold is None:
        delta = ks_threshold(n, m, level, method)
        if delta >= 1.0:
            raise ValueError(_too_few_points(n, m, level, method, delta))
        return delta
    check_array(threshold, "threshold", ndim=0, min_size=0)
    traced_range(threshold, "threshold", 0.0, 1.0, low_open=True)
    return check_float(threshold, "threshold", low=0.0, high=1.0, low_open=True)


def min_equal_size(level: float, method: str = "dkw") -> int:
    """Smallest equal sample size ``n`` whose default threshold ``ks_threshold(n, n, level, method)`` is below 1."""
    n = 1
    while ks_threshold(n, n, level, method) >= 1.0:
        n += 1
    return n


def _too_few_points(n: int, m: int, level: float, method: str, delta: float) -> str:
    need = min_equal_size(float(level), method)
    return (
        f"too few points for a KS test at level={float(level):g}: the default {method} threshold for sample sizes "
        f"{n} and {m} is {delta:.3g} >= 1, so every candidate would pass untrimmed (alpha_hat = 0) however far "
        f"it is from the reference. The level needs at least {need} points in each sample (effective size "
        f"2nm/(n+m) >= {need}; in ensemble_alpha_hat sample_size >= {need}, i.e. >= {2 * need} test points); "
        f"use more points, a larger level, or pass threshold=... explicitly."
    )


def sort_input(x: jax.Array) -> jax.Array:
    """``jnp.sort`` behind an optimisation barrier: when a caller ``jit``s a function that closes over a large
    reference, XLA would otherwise constant-fold the sort at compile time (minutes for 10^5 points)."""
    return jnp.sort(lax.optimization_barrier(x))
