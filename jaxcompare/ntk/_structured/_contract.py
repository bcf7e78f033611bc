"""Per-example gradients of stacked layer factors, ``Σ_t a_t ⊗ g_ct`` (used by the structured sketches,
:mod:`jaxcompare.ntk._sketch`). The exact structured kernels contract factors in :mod:`._blocks`. The contraction
goes through :func:`contract` (the precision policy; float32 accumulation of low-precision factors)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._common import contract

__all__: list[str] = []


def _per_example_grads(a: jax.Array, g: jax.Array) -> jax.Array:
    """``Σ_t a_t ⊗ g_ct`` per example as ``(N, D, C', E)``: one batched product ``(D × T) @ (T × C'E)`` per
    example (operands transposed first; XLA's CPU batched dot is several times faster in this layout)."""
    n, c, t, e = g.shape
    at = jnp.swapaxes(a, 1, 2)  # (N, D, T)
    gt = jnp.transpose(g, (0, 2, 1, 3)).reshape(n, t, c * e)  # (N, T, C'E)
    m = contract("ndt,ntk->ndk", at, gt).astype(jnp.result_type(a, g))  # accumulated in >= float32, kept in a's dtype
    return m.reshape(n, a.shape[-1], c, e)
