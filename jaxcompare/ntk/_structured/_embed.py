"""Embedding lookups as structured layers: a parameter ``E`` (``V × d``) whose only use is a ``gather`` of whole rows.

The lookup ``h_t = E[k_t]`` is a dense layer whose input is the one-hot vector of the token ``k_t``, so the gradient
of logit ``c`` for one example is ``Σ_t e_{k_t} ⊗ δ_{c,t}`` (``δ`` the sensitivity of the gathered rows) and

    <g_c(x_i), g_c(x_j)> = Σ_{t,s} [k_it = k_js] <δ_cit, δ_cjs>

— the Gram of positions of one-hot inputs is token equality. The factors kept per example are the token ids
``(T, 1)`` (int32) and ``δ`` ``(C', T, d)``, never a one-hot matrix; the per-example gradient (``V × C'·d``, for the
``grad``/``lazy`` layouts of :mod:`._blocks`) is a segment sum of ``δ`` over the ids. The index semantics follow the
gather's mode and autodiff: ``clip`` clamps the ids (its transpose clamps too); ``fill``/``promise_in_bounds`` drop
an out-of-range id (autodiff's scatter drops it), stored as ``-1``, equal to nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._common import contract

__all__: list[str] = []


def embed_layout(params: dict, op_shape: tuple, out_ndim: int):
    """``(vocab, out_perm, mode)`` when a ``gather`` with these parameters on an operand of ``op_shape`` looks up whole
    rows (or columns) of a 2-D table, one index per position; else None. ``out_perm`` moves the gathered feature
    axis last (the positions first, in index order); ``mode`` is ``"clip"`` or ``"drop"``."""
    dn = params["dimension_numbers"]
    if len(op_shape) != 2 or len(dn.offset_dims) != 1 or len(dn.collapsed_slice_dims) != 1:
        return None
    if getattr(dn, "operand_batching_dims", ()) or getattr(dn, "start_indices_batching_dims", ()):
        return None
    a = dn.collapsed_slice_dims[0]
    if tuple(dn.start_index_map) != (a,):
        return None
    sizes = tuple(params["slice_sizes"])
    if sizes[a] != 1 or sizes[1 - a] != op_shape[1 - a]:
        return None
    o = dn.offset_dims[0]
    out_perm = tuple(i for i in range(out_ndim) if i != o) + (o,)
    mode = "clip" if "CLIP" in str(params.get("mode")).upper() else "drop"
    return int(op_shape[a]), out_perm, mode


def embed_ids(indices: jax.Array, vocab: int, mode: str) -> jax.Array:
    """The row of the table each position reads, ``(T, 1)`` int32: clamped (``clip``) or ``-1`` where out of range."""
    k = indices.reshape(-1, 1).astype(jnp.int32)
    if mode == "clip":
        return jnp.clip(k, 0, vocab - 1)
    return jnp.where((k >= 0) & (k < vocab), k, -1)


def embed_grad(ids: jax.Array, g: jax.Array, vocab: int) -> jax.Array:
    """Per-example gradient of one example as ``(V, C', d)``: ``δ`` summed over the positions reading each row
    (``-1`` rows dropped)."""
    c, t, e = g.shape
    rows = jnp.transpose(g, (1, 0, 2)).reshape(t, c * e)
    acc = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))
    m = jax.ops.segment_sum(acc, ids[:, 0], num_segments=vocab)  # out-of-range (-1) segments are dropped
    return m.astype(g.dtype).reshape(vocab, c, e)


def embed_equal(ids1: jax.Array, ids2: jax.Array, dtype) -> jax.Array:
    """Gram of positions of one-hot inputs: ``[k_it = k_js]`` as ``(N1, T, N2, S)`` (``-1`` equal to nothing)."""
    k1, k2 = ids1[:, :, 0], ids2[:, :, 0]
    eq = (k1[:, :, None, None] == k2[None, None, :, :]) & (k1 >= 0)[:, :, None, None]
    return eq.astype(dtype)


def embed_pos_pair(ids1, g1, ids2, g2, full: bool) -> jax.Array:
    """``Σ_{t,s} [k_it = k_js] Σ_c <δ_cit, δ_cjs>`` (``full``: per class pair), the embedding's Gram of positions."""
    eq = embed_equal(ids1, ids2, g1.dtype)
    if full:
        gg = contract("icte,jdse->itjscd", g1, g2)
        return contract("itjs,itjscd->ijcd", eq, gg)
    gg = contract("icte,jcse->itjs", g1, g2)
    return jnp.sum(eq * gg, axis=(1, 3))


def embed_diag(ids: jax.Array, g: jax.Array, vocab: int) -> jax.Array:
    """``Σ_c |g_c|²`` of one example, by token equality (``T² ≤ V``) or from the gradient."""
    c, t, e = g.shape
    if t * t <= vocab:
        eq = ((ids[:, 0][:, None] == ids[:, 0][None, :]) & (ids[:, 0] >= 0)[:, None]).astype(g.dtype)
        return jnp.sum(eq * contract("cte,cse->ts", g, g))
    m = embed_grad(ids, g, vocab).reshape(-1)
    return contract("p,p->", m, m)
