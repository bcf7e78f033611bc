"""Contractions of the factors into kernels: per-layer Gram products ``(A Aᵀ) ⊙ (Σ_c G_c G_cᵀ)`` (or per-example
gradients when a layer has several positions and that is cheaper), the fallback blocks, symmetric tiles, diagonals.
Every contraction goes through :func:`contract` (the precision policy; float32 accumulation of low-precision
factors)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._common import contract
from ._analysis import analyze
from ._factors import factors

__all__ = ["kernel", "diag"]

# Gram-of-positions path only when its N1*N2*T*T intermediate stays below this many elements
_GRAM_ELEMENTS = 2**26


def _per_example_grads(a: jax.Array, g: jax.Array) -> jax.Array:
    """``Σ_t a_t ⊗ g_ct`` per example as ``(N, D, C', E)``: one batched product ``(D × T) @ (T × C'E)`` per
    example (operands transposed first; XLA's CPU batched dot is several times faster in this layout)."""
    n, c, t, e = g.shape
    at = jnp.swapaxes(a, 1, 2)  # (N, D, T)
    gt = jnp.transpose(g, (0, 2, 1, 3)).reshape(n, t, c * e)  # (N, T, C'E)
    m = contract("ndt,ntk->ndk", at, gt).astype(jnp.result_type(a, g))  # accumulated in >= float32, kept in a's dtype
    return m.reshape(n, a.shape[-1], c, e)


def _by_class(m: jax.Array) -> jax.Array:
    """``(N, D, C', E) -> (N, C', D·E)``."""
    n, d, c, e = m.shape
    return jnp.transpose(m, (0, 2, 1, 3)).reshape(n, c, d * e)


def _use_gram(a1, g1, a2, g2, full: bool) -> jax.Array:
    """Contribution of one structured layer: ``(N1, N2)`` (trace over C') or ``(N1, N2, C', C')`` (full)."""
    n1, c, t, e = g1.shape
    n2 = g2.shape[0]
    d = a1.shape[-1]
    if t == 1:
        ga = contract("id,jd->ij", a1[:, 0], a2[:, 0])
        if full:
            gg = contract("ice,jde->ijcd", g1[:, :, 0], g2[:, :, 0])
            return ga[:, :, None, None] * gg
        gg = contract("ip,jp->ij", g1.reshape(n1, -1), g2.reshape(n2, -1))
        return ga * gg
    cost_gram = n1 * n2 * t * t * (d + c * e)
    cost_mat = (n1 + n2) * c * t * d * e + n1 * n2 * c * d * e
    if not full and cost_gram < cost_mat and n1 * n2 * t * t <= _GRAM_ELEMENTS:
        ga = contract("itd,jsd->ijts", a1, a2)
        gg = contract("icte,jcse->ijts", g1, g2)
        return jnp.sum(ga * gg, axis=(2, 3))
    m1 = _per_example_grads(a1, g1)
    m2 = m1 if (a2 is a1 and g2 is g1) else _per_example_grads(a2, g2)
    if full:
        return contract("icp,jdp->ijcd", _by_class(m1), _by_class(m2))
    # the trace sums over all (d, c, e): any common order of the flattened gradients gives the same products
    return contract("ip,jp->ij", m1.reshape(n1, -1), m2.reshape(n2, -1))


def _use_diag(a, g) -> jax.Array:
    n, c, t, e = g.shape
    d = a.shape[-1]
    if t == 1:
        g = g.reshape(n, -1)
        return contract("nd,nd->n", a[:, 0], a[:, 0]) * contract("np,np->n", g, g)
    if t * t * (d + c * e) < c * t * d * e:
        ga = contract("ntd,nsd->nts", a, a)
        gg = contract("ncte,ncse->nts", g, g)
        return jnp.sum(ga * gg, axis=(1, 2))
    m = _per_example_grads(a, g).reshape(n, -1)
    return contract("np,np->n", m, m)


# With x2 = x1 the kernel is symmetric: its tiles below the diagonal are mirrored instead of computed, which saves
# up to half of the Gram FLOPs; tiles of at least this many rows keep the matrix products efficient.
_SYM_TILE = 128
_SYM_MAX_BLOCKS = 4


def _contract(a1, g1, j1, a2, g2, j2, full: bool):
    """Sum of the layer contributions (factors ``a``, ``g``) and of the per-example gradient blocks ``j``."""
    total = None
    for u in range(len(a1)):
        t = _use_gram(a1[u], g1[u], a2[u], g2[u], full)
        total = t if total is None else total + t
    for p, q in zip(j1, j2):
        t = contract("icp,jdp->ijcd" if full else "icp,jcp->ij", p, q)
        total = t if total is None else total + t
    if total is None:
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")
    return total


def kernel(apply_fn, params, x1, x2, *, mode: str):
    plan = analyze(apply_fn, params, x1.shape[1:], x1.dtype)
    summed = mode == "pseudo"
    full = mode == "full"
    a1, g1, j1 = factors(plan, params, x1, summed=summed)
    if x2 is not None:
        a2, g2, j2 = factors(plan, params, x2, summed=summed)
        k = _contract(a1, g1, j1, a2, g2, j2, full)
    else:
        n = x1.shape[0]
        nb = max(1, min(_SYM_MAX_BLOCKS, n // _SYM_TILE))
        if nb == 1 or full:
            k = _contract(a1, g1, j1, a1, g1, j1, full)
        else:
            # layers with several positions: per-example gradients formed once, then tiled like fallback leaves
            one = [u for u in range(len(a1)) if g1[u].shape[2] == 1]
            a, g = [a1[u] for u in one], [g1[u] for u in one]
            j = list(j1) + [_per_example_grads(a1[u], g1[u]).reshape(n, 1, -1) for u in range(len(a1)) if u not in one]
            cuts = [i * n // nb for i in range(nb + 1)]

            def part(fs, i):
                return [f[cuts[i] : cuts[i + 1]] for f in fs]

            tiles = {}
            for i in range(nb):
                for jj in range(i, nb):
                    tiles[i, jj] = _contract(
                        part(a, i), part(g, i), part(j, i), part(a, jj), part(g, jj), part(j, jj), False
                    )
            k = jnp.concatenate(
                [
                    jnp.concatenate([tiles[i, jj] if i <= jj else tiles[jj, i].T for jj in range(nb)], axis=1)
                    for i in range(nb)
                ],
                axis=0,
            )
    return k / plan.n_classes if summed else k


def diag(apply_fn, params, x, *, mode: str):
    plan = analyze(apply_fn, params, x.shape[1:], x.dtype)
    summed = mode == "pseudo"
    a, g, j = factors(plan, params, x, summed=summed)
    total = None
    for u in range(len(plan.uses)):
        t = _use_diag(a[u], g[u])
        total = t if total is None else total + t
    for p in j:
        t = contract("ncp,ncp->n", p, p)
        total = t if total is None else total + t
    if total is None:
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")
    return total / plan.n_classes if summed else total
