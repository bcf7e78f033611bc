"""Exact alpha-hat: the smallest trimming level at which the trimmed KS distance is within a threshold."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from ._common import check_samples, resolve_threshold, sort_input
from ._core import Solution, make_grid, solve_alpha_hat

__all__ = ["alpha_hat"]


def alpha_hat(candidate: Any, reference: Any, *, threshold: Any = None, level: float = 0.01) -> jax.Array:
    r"""Exact ``alpha_hat = min {alpha in [0, 1] : d_alpha(F0, F) <= delta}`` (no grid).

    How much of the candidate's distribution must be trimmed away before the KS test against the reference accepts.
    With ``L = 1/(1 - alpha)`` every constraint of ``d_alpha <= delta`` reads ``c - L b <= t``:
    rays ``(F0(z-), F(z-))`` and ``(1 - F0(z), 1 - F(z))`` with ``t = delta`` are solved in closed form,
    ``L_ray = max(1, max_{b>0} (c - t)/b)``; interval constraints ``(F0(z_i-) - F0(z_j), F(z_i-) - F(z_j))``,
    ``j < i``, with ``t = 2 delta`` by Newton/Dinkelbach steps on the convex ``phi(L) = max (c - L b) - 2 delta``
    (finite: at most ``m + 1`` steps, typically < 10). ``alpha_hat = 1 - 1/L_hat``; it is 1 when no trimming of the
    candidate can pass (reference mass above ``delta`` where the candidate has none).

    Fixed shapes and a ``lax.while_loop``, so it runs under ``jit`` and ``vmap``; for many candidates::

        a = jax.vmap(lambda c: alpha_hat(c, ref, threshold=ks_threshold(m, n, level=0.01)))(candidates)

    Args:
      candidate: ``(m,)`` scores of the model under test (trimmed).
      reference: ``(n,)`` reference scores.
      threshold: KS acceptance threshold ``delta`` in ``(0, 1]``; default ``ks_threshold(m, n, level)`` (DKW).
      level: error level for the default threshold, in ``(0, 1)``.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` in the samples' floating dtype. Accuracy: exact up to rounding
      (~1e-12 in float64, ~1e-6 in float32).

    Raises:
      ValueError: empty or NaN/inf samples, ``threshold`` outside ``(0, 1]``, ``level`` outside ``(0, 1)``, or too
        few points for the default threshold (it would be ``>= 1``: every candidate passes untrimmed); the message
        says how many points the level needs. Under ``jit``/``vmap`` the value checks (NaN/inf samples, threshold
        range) run inside :func:`jaxcompare.checked` only; otherwise a NaN sample gives a meaningless number.

    Example:
      >>> import jax.numpy as jnp
      >>> ref = jnp.linspace(0.0, 1.0, 101)
      >>> cand = jnp.concatenate([ref, jnp.full(25, 5.0)])   # 25 of 126 points are outliers
      >>> round(float(alpha_hat(cand, ref, threshold=0.05)), 6)    # = 1 - 101 / (0.95 * 126)
      0.156224
    """
    c, r, dtype = check_samples(candidate, reference)
    delta = resolve_threshold(threshold, level, c.shape[0], r.shape[0])
    return _alpha_hat(c, r, jnp.asarray(delta, dtype)).alpha


@partial(jax.jit, static_argnames=("grid", "max_iter"))
def _alpha_hat(
    c: jax.Array, r: jax.Array, delta: jax.Array, grid: str = "auto", max_iter: int | None = None
) -> Solution:
    grid = make_grid(c, sort_input(r), grid)
    return solve_alpha_hat(grid, delta, c.dtype, max_iter)
