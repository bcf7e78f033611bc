"""Fixed-shape helpers for runs of equal values in a sorted array (ties), shared by metrics and trimming.

Every helper is O(n) (cumulative max/min), keeps shapes static and therefore works under ``jit`` and ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["run_bounds", "run_lengths"]


def run_bounds(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First and last index of the run of equal values each position belongs to.

    Args:
      keys: ``(n,)`` array whose equal values are contiguous (e.g. sorted). A tuple of such arrays of equal
        length defines runs of equal *tuples* (lexicographic ties).

    Returns:
      ``(start, end)``: two ``(n,)`` int arrays with ``keys[start[k]] == keys[k] == keys[end[k]]`` and the run
      maximal, so ``end - start + 1`` is the multiplicity of ``keys[k]``.
    """
    cols = keys if isinstance(keys, (tuple, list)) else (keys,)
    n = cols[0].shape[0]
    idx = jnp.arange(n)
    if n == 0:
        return idx, idx
    diff = jnp.zeros((n - 1,), dtype=bool)
    for c in cols:
        diff = diff | (c[1:] != c[:-1])
    new_run = jnp.concatenate([jnp.ones((1,), dtype=bool), diff])  # position k starts a run
    run_end = jnp.concatenate([diff, jnp.ones((1,), dtype=bool)])  # position k ends a run
    start = lax.cummax(jnp.where(new_run, idx, 0))
    end = lax.cummin(jnp.where(run_end, idx, n - 1), reverse=True)
    return start, end


def run_lengths(keys: jax.Array) -> jax.Array:
    """Multiplicity of each entry's value in a sorted ``(n,)`` array (or tuple of arrays), as an int array."""
    start, end = run_bounds(keys)
    return end - start + 1
