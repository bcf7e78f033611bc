"""Per-example factors of the gradients: layer inputs ``A`` and output sensitivities ``G`` of every structured layer
(``g_c = Σ_t A_t ⊗ G_{c,t}``) and per-example gradients ``J`` of the fallback leaves, from one ``vjp`` per class of
the perturbed program."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._common import HIGHEST
from ._analysis import Plan, Use
from ._program import Program, run

__all__ = ["factors", "example_factors", "out_dtype"]


def _as_positions(v: jax.Array, perm: tuple, n_pos: int) -> jax.Array:
    """Per example: transpose to (positions..., features...) and flatten to (T, D)."""
    v = jnp.transpose(v, perm)
    t = int(np.prod(v.shape[:n_pos], dtype=np.int64))
    return v.reshape(t, -1)


def _act_matrix(u: Use, prog: Program, a: jax.Array) -> jax.Array:
    """Per example ``(T, D)`` layer inputs (patches for a convolution), with a column of ones for a fused bias."""
    if u.kind == "conv" and not u.by_patches:
        p = prog.eqns[u.eqn].params
        a = jax.lax.conv_general_dilated_patches(
            a,
            u.filter_shape,
            p["window_strides"],
            p["padding"],
            p["lhs_dilation"],
            p["rhs_dilation"],
            p["dimension_numbers"],
            precision=HIGHEST,
        )
    m = a.reshape(-1, a.shape[-1]) if u.by_patches else _as_positions(a, u.act_perm, u.n_pos)
    if u.bias is not None:
        m = jnp.concatenate([m, jnp.ones((m.shape[0], 1), m.dtype)], axis=1)
    return m


def out_dtype(plan: Plan, leaves: list):
    """Dtype of the factors: the result type of the differentiated leaves."""
    if plan.uses or plan.fallback:
        return jnp.result_type(*[leaves[u.leaf] for u in plan.uses], *[leaves[l] for l in plan.fallback])
    return jnp.result_type(float)


def example_factors(plan: Plan, leaves: list, xi: jax.Array, *, summed: bool):
    """The factors of one example ``xi`` (no batch axis): lists ``A[u]`` ``(T, D)``, ``G[u]`` ``(C', T, E)`` and
    ``J[l]`` ``(C', P_l)`` (see :func:`factors`), cast to :func:`out_dtype`."""
    prog = plan.prog
    capture = {u.eqn: u.act for u in plan.uses}
    patch_convs = frozenset(u.eqn for u in plan.uses if u.by_patches)
    c = plan.n_classes
    out_dt = out_dtype(plan, leaves)

    def g(eps, fb):
        vals = list(leaves)
        for l, v in zip(plan.fallback, fb):
            vals[l] = v
        outs, acts = run(prog, vals, xi[None], dict(zip([u.out for u in plan.uses], eps)), capture, patch_convs)
        return outs[0][0], acts

    eps0 = [jnp.zeros(u.out_shape, u.out_dtype) for u in plan.uses]
    fb0 = [leaves[l] for l in plan.fallback]
    out, vjp_fn, acts = jax.vjp(g, eps0, fb0, has_aux=True)
    cts = jnp.ones((1, c), out.dtype) if summed else jnp.eye(c, dtype=out.dtype)
    d_eps, d_fb = jax.vmap(vjp_fn)(cts)
    a_mats = [_act_matrix(u, prog, acts[u.eqn]).astype(out_dt) for u in plan.uses]
    g_mats = [
        jax.vmap(lambda d, u=u: _as_positions(d, u.out_perm, u.n_pos))(d).astype(out_dt)
        for u, d in zip(plan.uses, d_eps)
    ]
    j_mats = [d.reshape(d.shape[0], -1).astype(out_dt) for d in d_fb]
    return a_mats, g_mats, j_mats


def factors(plan: Plan, params: Any, x: jax.Array, *, summed: bool):
    """Per-example factors of the gradients of every logit (``summed``: of the summed logits).

    Returns ``(A, G, J)``: for each structured use, ``A[u]`` ``(N, T, D)`` inputs and ``G[u]`` ``(N, C', T, E)``
    output sensitivities with ``g_c = Σ_t A[:, t] ⊗ G[:, c, t]``; for each fallback leaf ``J[l]`` ``(N, C', P_l)``
    per-example gradients. ``C' = 1`` when ``summed`` else ``C``.
    """
    leaves = jax.tree_util.tree_leaves(params)
    return jax.vmap(lambda xi: example_factors(plan, leaves, xi, summed=summed))(x)
