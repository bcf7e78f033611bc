"""Per-example factors of the gradients: layer inputs ``A`` and output sensitivities ``G`` of every structured layer
(``g_c = Σ_t A_t ⊗ G_{c,t}``) and per-example gradients ``J`` of the fallback leaves, from one ``vjp`` per class of
the perturbed program.

Cost (quarter-width ResNet-18 on the 2-core CPU, float32, C = 10): 12–13 ms per example for all factors, about
the model's own C input-gradient passes (11 ms by ``vmap(jacrev)``). Convolutions run natively
(:func:`._patches.conv_native`: the filter of the transposed convolution kept in the forward layout, which XLA:CPU
needs inside the pass's loop — JAX's own rule made the pass 5× slower) except strided ones on CPU (patches @
filter: :func:`._patches.prefer_patches`); the patches of a natively evaluated convolution are strided slices of
its recorded input, formed once per example after the backward passes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._common import HIGHEST
from ._analysis import Plan, Use
from ._embed import embed_ids
from ._patches import conv_patches, prefer_patches, raw_input
from ._program import Program, run

__all__ = ["factors", "example_factors", "out_dtype"]


def _as_positions(v: jax.Array, perm: tuple, n_pos: int) -> jax.Array:
    """Per example: transpose to (positions..., features...) and flatten to (T, D)."""
    v = jnp.transpose(v, perm)
    t = int(np.prod(v.shape[:n_pos], dtype=np.int64))
    return v.reshape(t, -1)


def _act_matrix(u: Use, prog: Program, a: jax.Array, by_patches: bool) -> jax.Array:
    """Per example ``(T, D)`` layer inputs (patches for a convolution), with a column of ones for a fused bias.
    ``by_patches``: the convolution was evaluated as patches @ filter and ``a`` already holds its patches."""
    if u.kind == "embed":  # an embedding lookup: the token ids (T, 1), int32 (see ._embed)
        return embed_ids(a, u.vocab, u.mode)
    if u.kind == "conv" and not by_patches and u.by_patches:  # evaluated natively: patches by strided slices
        a = conv_patches(a, prog.eqns[u.eqn].params, u.filter_shape)
        by_patches = True
    elif u.kind == "conv" and not by_patches:  # input dilation: XLA's patches (a convolution with an identity filter)
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
    m = a.reshape(-1, a.shape[-1]) if by_patches else _as_positions(a, u.act_perm, u.n_pos)
    if u.bias is not None:
        m = jnp.concatenate([m, jnp.ones((m.shape[0], 1), m.dtype)], axis=1)
    return m


def out_dtype(plan: Plan, leaves: list):
    """Dtype of the factors: the result type of the differentiated leaves."""
    if plan.uses or plan.fallback:
        return jnp.result_type(*[leaves[u.leaf] for u in plan.uses], *[leaves[l] for l in plan.fallback])
    return jnp.result_type(float)


def example_factors(
    plan: Plan, leaves: list, xi: jax.Array, *, summed: bool, classes: tuple | None = None, raw: frozenset = frozenset()
):
    """The factors of one example ``xi`` (no batch axis): lists ``A[u]`` ``(T, D)``, ``G[u]`` ``(C', T, E)`` and
    ``J[l]`` ``(C', P_l)`` (see :func:`factors`), cast to :func:`out_dtype` (embedding ids stay int32).
    ``classes = (start, size)``: only logits ``start .. start + size - 1`` (``start`` may be traced; rows past the
    last class are zero), ``C' = size``. ``raw``: indices of convolution uses whose ``A[u]`` is their raw input
    ``(T_in, C_in)`` (:func:`._patches.raw_input`; its patches by :func:`._patches.patches_of`)."""
    prog = plan.prog
    capture = {u.eqn: u.act for u in plan.uses}
    # the convolution strategy, per layer and backend (patches for strided convolutions on CPU, else native)
    patch_convs = frozenset(u.eqn for u in plan.uses if u.by_patches and prefer_patches(prog.eqns[u.eqn].params))
    raw_eqns = frozenset(plan.uses[u].eqn for u in raw)
    c = plan.n_classes
    out_dt = out_dtype(plan, leaves)

    def g(eps, fb):
        vals = list(leaves)
        for l, v in zip(plan.fallback, fb):
            vals[l] = v
        outs, acts = run(
            prog, vals, xi[None], dict(zip([u.out for u in plan.uses], eps)), capture, patch_convs, raw_eqns
        )
        return outs[0][0], acts

    eps0 = [jnp.zeros(u.out_shape, u.out_dtype) for u in plan.uses]
    fb0 = [leaves[l] for l in plan.fallback]
    out, vjp_fn, acts = jax.vjp(g, eps0, fb0, has_aux=True)
    cts = jnp.ones((1, c), out.dtype) if summed else jnp.eye(c, dtype=out.dtype)
    if classes is not None and not summed:  # one chunk of classes (a zero row past the last class adds nothing)
        basis = jnp.concatenate([cts, jnp.zeros((classes[1] - 1, c), out.dtype)], axis=0)
        cts = jax.lax.dynamic_slice_in_dim(basis, classes[0], classes[1], 0)
    d_eps, d_fb = jax.vmap(vjp_fn)(cts)
    a_mats = [
        raw_input(acts[u.eqn], u.geo) if i in raw else _act_matrix(u, prog, acts[u.eqn], u.eqn in patch_convs)
        for i, u in enumerate(plan.uses)
    ]
    a_mats = [a if u.kind == "embed" else a.astype(out_dt) for u, a in zip(plan.uses, a_mats)]
    g_mats = [
        jax.vmap(lambda d, u=u: _as_positions(d, u.out_perm, u.n_pos))(d).astype(out_dt)
        for u, d in zip(plan.uses, d_eps)
    ]
    j_mats = [d.reshape(d.shape[0], -1).astype(out_dt) for d in d_fb]
    return a_mats, g_mats, j_mats


def factors(plan: Plan, params: Any, x: jax.Array, *, summed: bool, classes: tuple | None = None):
    """Per-example factors of the gradients of every logit (``summed``: of the summed logits).

    Returns ``(A, G, J)``: for each structured use, ``A[u]`` ``(N, T, D)`` inputs and ``G[u]`` ``(N, C', T, E)``
    output sensitivities with ``g_c = Σ_t A[:, t] ⊗ G[:, c, t]``; for each fallback leaf ``J[l]`` ``(N, C', P_l)``
    per-example gradients. ``C' = 1`` when ``summed`` else ``C`` (``classes``: see :func:`example_factors`).
    """
    leaves = jax.tree_util.tree_leaves(params)
    return jax.vmap(lambda xi: example_factors(plan, leaves, xi, summed=summed, classes=classes))(x)
