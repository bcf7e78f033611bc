"""Per-example factors of the gradients: layer inputs ``A`` and output sensitivities ``G`` of every structured layer
(``g_c = Σ_t A_t ⊗ G_{c,t}``) and per-example gradients ``J`` of the fallback leaves, from one ``vjp`` per class of
the perturbed program. The ``J`` of elementwise scales and shifts (:class:`._analysis.Scale`) are sums over
positions of their recorded activation times their sensitivity, formed after the passes by pairwise adds: inside the
passes, autodiff's fused multiply-and-reduce ran ~6× slower on XLA:CPU (4.5 against 0.8 ms for 16 examples × 10
classes × 64 positions × 256 features).

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
from ._analysis import Plan, Scale, Use
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
    plan: Plan,
    leaves: list,
    xi: jax.Array,
    *,
    summed: bool,
    classes: tuple | None = None,
    raw: frozenset = frozenset(),
    seeds: jax.Array | None = None,
):
    """The factors of one example ``xi`` (no batch axis): lists ``A[u]`` ``(T, D)``, ``G[u]`` ``(C', T, E)`` and
    ``J[l]`` ``(C', P_l)`` (see :func:`factors`), cast to :func:`out_dtype` (embedding ids stay int32).
    ``classes = (start, size)``: only logits ``start .. start + size - 1`` (``start`` may be traced; rows past the
    last class are zero), ``C' = size``. ``raw``: indices of convolution uses whose ``A[u]`` is their raw input
    ``(T_in, C_in)`` (:func:`._patches.raw_input`; its patches by :func:`._patches.patches_of`). ``seeds``: a
    ``(C', C)`` matrix whose rows are the cotangents of the backward passes (the gradients of ``Σ_c seeds[k, c]
    f_c``: output probes, :mod:`jaxcompare.ntk._probes`) instead of the identity; not with ``summed`` or
    ``classes``."""
    prog = plan.prog
    capture = {u.eqn: u.act for u in plan.uses} | {s.eqn: s.act for s in plan.scales if s.scale is not None}
    # the convolution strategy, per layer and backend (patches for strided convolutions on CPU, else native)
    patch_convs = frozenset(u.eqn for u in plan.uses if u.by_patches and prefer_patches(prog.eqns[u.eqn].params))
    raw_eqns = frozenset(plan.uses[u].eqn for u in raw)
    c = plan.n_classes
    out_dt = out_dtype(plan, leaves)
    by_scale = {l for s in plan.scales for l in (s.scale, s.shift) if l is not None}
    diff = [l for l in plan.fallback if l not in by_scale]  # leaves differentiated in the backward passes
    perturbed = [u.out for u in plan.uses] + [s.out for s in plan.scales]

    def g(eps, fb):
        vals = list(leaves)
        for l, v in zip(diff, fb):
            vals[l] = v
        outs, acts = run(prog, vals, xi[None], dict(zip(perturbed, eps)), capture, patch_convs, raw_eqns)
        return outs[0][0], acts

    eps0 = [jnp.zeros(u.out_shape, u.out_dtype) for u in (*plan.uses, *plan.scales)]
    fb0 = [leaves[l] for l in diff]
    out, vjp_fn, acts = jax.vjp(g, eps0, fb0, has_aux=True)
    cts = jnp.ones((1, c), out.dtype) if summed else jnp.eye(c, dtype=out.dtype)
    if seeds is not None:
        if summed or classes is not None or seeds.ndim != 2 or seeds.shape[1] != c:
            raise ValueError(f"seeds must be (C', {c}) without summed or classes, got {seeds.shape}.")
        cts = seeds.astype(out.dtype)
    elif classes is not None and not summed:  # one chunk of classes (a zero row past the last class adds nothing)
        basis = jnp.concatenate([cts, jnp.zeros((classes[1] - 1, c), out.dtype)], axis=0)
        cts = jax.lax.dynamic_slice_in_dim(basis, classes[0], classes[1], 0)
    d_eps, d_fb = jax.vmap(vjp_fn)(cts)
    d_scale, d_eps = d_eps[len(plan.uses) :], d_eps[: len(plan.uses)]
    a_mats = [
        raw_input(acts[u.eqn], u.geo) if i in raw else _act_matrix(u, prog, acts[u.eqn], u.eqn in patch_convs)
        for i, u in enumerate(plan.uses)
    ]
    a_mats = [a if u.kind == "embed" else a.astype(out_dt) for u, a in zip(plan.uses, a_mats)]
    g_mats = [
        jax.vmap(lambda d, u=u: _as_positions(d, u.out_perm, u.n_pos))(d).astype(out_dt)
        for u, d in zip(plan.uses, d_eps)
    ]
    grads = dict(zip(diff, d_fb))
    for s, d in zip(plan.scales, d_scale):
        grads.update(_scale_grads(s, acts.get(s.eqn), d))
    j_mats = [grads[l].reshape(grads[l].shape[0], -1).astype(out_dt) for l in plan.fallback]
    return a_mats, g_mats, j_mats


def _sum_positions(v: jax.Array) -> jax.Array:
    """Sum over axis 1 of ``(C', T, F)`` by halving (pairwise adds of contiguous slices): on XLA:CPU a fused
    multiply-and-reduce over the positions ran ~6× slower than these adds (and pairwise summation is the more
    accurate)."""
    while v.shape[1] > 1:
        h = v.shape[1] // 2
        rest = v[:, 2 * h :]
        v = v[:, :h] + v[:, h : 2 * h]
        if rest.shape[1]:
            v = jnp.concatenate([v, rest], axis=1)
    return v[:, 0]


def _in_leaf_order(v: jax.Array, order) -> jax.Array:
    """``v`` ``(C', F)`` with its entries (in the activation's feature order; ``order[f]``: the leaf entry at feature
    ``f``) put back in the leaf's order; ``v`` itself when that is already the leaf's order (a norm's scale). XLA:CPU
    fused even an identity gather with the sum before it into one slow loop: median factor pass of 32 examples × 2
    classes (``python benchmarks/tune_sketch.py --factors transformer 32 2``), three rounds, 536/466/478 ms with it,
    414/437/438 ms without; the ViT's 579/542/565 and 481/497/441 ms."""
    inv = np.argsort(order)
    return v if np.array_equal(inv, np.arange(inv.size)) else v[:, inv]


def _scale_grads(s: Scale, act: jax.Array | None, d: jax.Array) -> dict:
    """Per-example gradients ``(C', P_leaf)`` of an elementwise scale and its shift (:class:`._analysis.Scale`) from
    the recorded activation ``act`` (the output's shape) and the sensitivities ``d`` ``(C', *output)``: ``Σ_t a_t ⊙
    δ_{c,t}`` and ``Σ_t δ_{c,t}`` (accumulated in at least float32), entries put back in the leaf's order."""
    acc = jnp.promote_types(d.dtype, jnp.float32)
    c = d.shape[0]
    dd = jnp.transpose(d.astype(acc), (0, *(1 + p for p in s.perm)))
    dd = dd.reshape(c, s.n_positions, -1)  # (C', T, F)
    out = {}
    if s.scale is not None:
        a = jnp.broadcast_to(act.astype(acc), s.out_shape)  # size-1 axes broadcast by the op itself
        a = jnp.transpose(a, s.perm).reshape(1, s.n_positions, -1)
        out[s.scale] = _in_leaf_order(_sum_positions(dd * a), s.order_scale)
    if s.shift is not None:
        out[s.shift] = _in_leaf_order(_sum_positions(dd), s.order_shift)
    return out


def factors(
    plan: Plan, params: Any, x: jax.Array, *, summed: bool, classes: tuple | None = None, seeds: jax.Array | None = None
):
    """Per-example factors of the gradients of every logit (``summed``: of the summed logits).

    Returns ``(A, G, J)``: for each structured use, ``A[u]`` ``(N, T, D)`` inputs and ``G[u]`` ``(N, C', T, E)``
    output sensitivities with ``g_c = Σ_t A[:, t] ⊗ G[:, c, t]``; for each fallback leaf ``J[l]`` ``(N, C', P_l)``
    per-example gradients. ``C' = 1`` when ``summed`` else ``C`` (``classes``, ``seeds``: see
    :func:`example_factors`).
    """
    leaves = jax.tree_util.tree_leaves(params)
    return jax.vmap(lambda xi: example_factors(plan, leaves, xi, summed=summed, classes=classes, seeds=seeds))(x)
