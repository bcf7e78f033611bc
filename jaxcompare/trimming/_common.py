"""Input checks shared by the public trimming functions."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_array, check_float, check_probability
from ._threshold import ks_threshold


def check_samples(candidate: Any, reference: Any) -> tuple[jax.Array, jax.Array, Any]:
    """Two non-empty finite 1-D samples, promoted to a common floating dtype."""
    c = check_array(candidate, "candidate", ndim=1)
    r = check_array(reference, "reference", ndim=1)
    dtype = jnp.result_type(c.dtype, r.dtype)
    return c.astype(dtype), r.astype(dtype), dtype


def resolve_threshold(threshold: Any, level: Any, n: int, m: int, method: str = "dkw") -> Any:
    """``threshold`` checked to lie in (0, 1], or the default ``ks_threshold(n, m, level, method)``."""
    check_probability(level, "level")
    if threshold is None:
        return ks_threshold(n, m, level, method)
    check_array(threshold, "threshold", ndim=0, min_size=0)
    return check_float(threshold, "threshold", low=0.0, high=1.0, low_open=True)


def sort_input(x: jax.Array) -> jax.Array:
    """``jnp.sort`` behind an optimisation barrier: when a caller ``jit``s a function that closes over a large
    reference, XLA would otherwise constant-fold the sort at compile time (minutes for 10^5 points)."""
    return jnp.sort(lax.optimization_barrier(x))
