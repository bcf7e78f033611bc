"""Input checks shared by the public trimming functions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checked import traced_finite, traced_range
from .._precision import accumulation_dtype
from .._validation import check_array, check_float, check_probability, host_float64, is_concrete
from ._threshold import ks_threshold


def check_samples(candidate: Any, reference: Any, *, order_only: bool = True) -> tuple[jax.Array, jax.Array, Any]:
    """Two non-empty finite 1-D samples, promoted to a common floating dtype of at least float32 (finiteness of
    traced samples is checked in :func:`jaxcompare.checked` mode). ``order_only``: the caller's statistic depends
    on the order of the pooled values only (KS-type), so inputs wider than float32 may be replaced by their joint
    ranks (:func:`exact_order`)."""
    c = check_array(candidate, "candidate", ndim=1)
    r = check_array(reference, "reference", ndim=1)
    traced_finite(c, "candidate")
    traced_finite(r, "reference")
    if order_only:
        c, r = exact_order([(candidate, c), (reference, r)])
    dtype = accumulation_dtype(c, r)  # counts: not in float16
    return c.astype(dtype), r.astype(dtype), dtype


def _wider_than_float32(x: Any) -> bool:
    if isinstance(x, jax.Array):
        return False  # a JAX array holds no more than its dtype, which JAX computes in
    a = np.asarray(x)
    if a.dtype.kind == "f":
        return a.dtype.itemsize > 4
    return a.dtype.kind in "iu" and a.size > 0 and bool(np.abs(a.astype(np.float64)).max() > 2**24)


def exact_order(pairs: list[tuple[Any, jax.Array]]) -> list[jax.Array]:
    """The validated arrays of ``(input, validated)`` pairs, for statistics that depend only on the order of their
    pooled values. Without ``jax_enable_x64``, JAX holds NumPy float64 (and integers beyond ``2**24``) in float32,
    whose rounding ties values that differ (``1 + 1e-9`` and ``1``: a KS distance of 1 read as 0); then the inputs
    are replaced by their joint ranks in float32 (exact below ``2**24`` distinct values), which keep the order."""
    checked = [a for _, a in pairs]
    if jax.config.jax_enable_x64 or not all(is_concrete(a) for a in checked):
        return checked
    if not any(_wider_than_float32(x) for x, _ in pairs):
        return checked
    hosts = [host_float64(x, a) for x, a in pairs]
    values, ranks = np.unique(np.concatenate([h.ravel() for h in hosts]), return_inverse=True)
    if values.size > 2**24:  # ranks are not exact in float32 either
        return checked
    out, start = [], 0
    for h in hosts:
        out.append(jnp.asarray(ranks[start : start + h.size].reshape(h.shape), jnp.float32))
        start += h.size
    return out


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
