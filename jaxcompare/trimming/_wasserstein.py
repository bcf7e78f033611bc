"""The Wasserstein-ball analogue of alpha-hat: excess W1 mass outside a KS band."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._checked import traced_range
from .._validation import check_array, check_float
from ._common import check_samples, sort_input

__all__ = ["w1_excess"]


def w1_excess(candidate: Any, reference: Any, threshold: Any) -> jax.Array:
    r"""``eps_hat = \int (|F(x) - F0(x)| - delta)^+ dx``: the W1 budget needed to move ``F`` into a KS ball.

    Closed form of ``min {W1(F~, F) : ||F0 - F~||_inf <= delta}``: the optimiser is
    ``F~ = clip(F, F0 - delta, F0 + delta)``, so ``min_{W1(F~,F) <= eps} ||F0 - F~||_inf <= delta`` iff
    ``eps >= eps_hat``. It is the Wasserstein analogue of :func:`alpha_hat` (a budget of moved mass times distance,
    in the units of the scores, instead of a fraction of trimmed mass). ``delta = 0`` gives the 1-Wasserstein
    distance between the two empirical distributions.

    Both eCDFs are step functions, so the integral is an exact sum over the gaps between sorted pooled values:
    ``sum_k (z_{k+1} - z_k) (|F(z_k) - F0(z_k)| - delta)^+``. Fixed shapes; runs under ``jit``/``vmap``.

    Args:
      candidate: ``(m,)`` candidate scores (eCDF ``F``).
      reference: ``(n,)`` reference scores (eCDF ``F0``).
      threshold: KS band half-width ``delta >= 0`` (e.g. :func:`ks_threshold`).

    Returns:
      Scalar ``jax.Array >= 0`` in the samples' floating dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> float(w1_excess(jnp.array([0.0]), jnp.array([2.0]), 0.25))   # |F - F0| = 1 on [0, 2)
      1.5
    """
    c, r, dtype = check_samples(candidate, reference, order_only=False)  # W1 needs the values
    check_array(threshold, "threshold", ndim=0, min_size=0)
    check_float(threshold, "threshold", low=0.0)
    traced_range(threshold, "threshold", 0.0)
    return _w1_excess(c, r, jnp.asarray(threshold, dtype))


@jax.jit
def _w1_excess(c: jax.Array, r: jax.Array, delta: jax.Array) -> jax.Array:
    cs, rs = sort_input(c), sort_input(r)
    z = jnp.sort(jnp.concatenate([cs, rs]))
    F = jnp.searchsorted(cs, z, side="right").astype(c.dtype) / c.shape[0]
    F0 = jnp.searchsorted(rs, z, side="right").astype(c.dtype) / r.shape[0]
    excess = jnp.maximum(jnp.abs(F - F0) - delta, 0)
    return jnp.sum(excess[:-1] * jnp.diff(z))
