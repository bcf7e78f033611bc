"""Structured sketch of per-example gradients: a CountSketch of each layer's gradient, formed from the layer's
factors (inputs ``A`` and output sensitivities ``Δ_c``) one block of examples at a time.

The gradient of logit ``c`` is ``g_c = [g_c^(1); …; g_c^(L); j_c]``: for each structured layer ``l`` (a dense or
convolutional weight with its fused bias) ``g_c^(l) = Σ_t a_t ⊗ δ_{c,t}`` (see :mod:`jaxcompare.ntk._structured`),
and ``j_c`` the per-example gradients of the other (fallback) leaves, hashed together as one vector. Every entry
``p`` of a layer ``l`` (or of the fallback vector) gets, in each of two independent halves ``h ∈ {a, b}``, a random
sign ``s_h(p)`` and a bucket ``β_h(p) ∈ {0, …, K/2−1}``, independent across layers and halves; the features are
``φ = [φ_a; φ_b] / √2`` with::

    φ_{h,c}(x)[k] = Σ_l Σ_{p : β_{h,l}(p) = k} s_{h,l}(p) · g_c^(l)(x)[p]

— two ``K/2``-dimensional CountSketches of the whole gradient (Charikar, Chen & Farach-Colton 2002; the sparse JL
transform with one nonzero per column, Kane & Nelson 2014). Within a leaf the buckets are a random permutation of
the ``P_l`` entries (padded to a multiple of ``K/2``) taken modulo ``K/2``; the layer's gradients of a block are laid
out as rows ``(P_l, block·C)`` and added row by row into their buckets (contiguous vector adds) — no ``K × P``
matrix.

Unbiased: signs are independent and mean-zero, so ``E[<φ_c(x), φ_c'(x')>] = <g_c(x), g_c'(x')>``.
Variance: for vectors ``u = g(x)``, ``v = g(x')`` of ``P`` entries, one half (``M = K/2`` buckets) has::

    Var <φ_h(x), φ_h(x')> = Σ_{p≠q} Pr[β(p)=β(q)] (u_p² v_q² + u_p v_p u_q v_q)
                          ≤ (1/M) (‖u‖² ‖v‖² + <u, v>² − 2 Σ_p u_p² v_p²)

(collisions within a leaf have probability ``(P_l/M − 1)/(P_l − 1) ≤ 1/M``, across leaves ``1/M``), and the mean of
the two independent halves has half that: ``≤ (1/K)(‖u‖² ‖v‖² + <u, v>² − 2 Σ_p u_p² v_p²)`` — exactly the
variance of a dense Rademacher projection with entries ``±1/√K``. So at equal ``K`` its error matches the dense
projection's while costing ``O(P)`` per example and class instead of ``O(K·P)``.

Cost: the per-example gradient of one layer, ``Σ_t a_t δ_tᵀ`` (a ``(D × T)(T × C·E)`` product per example), is
formed for one block of examples and one layer at a time and sketched at once — so memory is bounded by
``block · C · max_l P_l``, never ``N · C · P``. (A factored sketch ``Σ_t (R_in a_t) ⊙ (R_out δ_t)`` — TensorSketch
or a Khatri–Rao product — never forms the layer gradient, but costs ``T · K · (D + C·E)`` per example against
``T · C · D · E``, which is larger whenever ``K`` exceeds the output width of the layer, and its variance on the
rank-one gradients of dense layers is up to 3× that of a dense projection; so it is not used.)

Error estimate: the two independent halves give two unbiased estimates of every kernel entry (each ``2 ×`` the Gram
of its half of ``φ``); their difference estimates the standard error of the full sketch. See
:func:`jaxcompare.projected_kernel`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_int, check_key
from ._structured import analyze, factors
from ._structured._contract import _per_example_grads

__all__ = ["StructuredProjection", "structured_projection"]

# examples sketched together when block_size is automatic: at most this many, and within the memory budget
_MAX_BLOCK = 64


def _hash_tables(key: jax.Array, size: int, dim: int) -> tuple[jax.Array, jax.Array]:
    """``(buckets, signs)`` of one leaf's ``size`` entries: entry ``p`` goes to bucket ``π(p) mod dim`` for a random
    permutation ``π`` of ``ceil(size/dim)·dim`` slots (so every bucket receives at most ``ceil(size/dim)`` entries),
    with sign ``±1``."""
    padded = -(-size // dim) * dim
    buckets = jax.random.permutation(jax.random.fold_in(key, 0), padded)[:size] % dim
    signs = jax.random.rademacher(jax.random.fold_in(key, 1), (size,), dtype=jnp.int8)
    return buckets, signs


def _sketch(v: jax.Array, buckets: jax.Array, signs: jax.Array, dim: int) -> jax.Array:
    """CountSketch of the last axis of ``v`` (``(..., P)`` -> ``(..., dim)``)."""
    lead = v.shape[:-1]
    rows = jnp.moveaxis(v.reshape((-1, v.shape[-1])), 0, 1)  # (P, R)
    return jnp.moveaxis(_sketch_rows(rows, buckets, signs, dim), 0, 1).reshape(lead + (dim,))


def _sketch_rows(rows: jax.Array, buckets: jax.Array, signs: jax.Array, dim: int) -> jax.Array:
    """CountSketch of the rows of ``rows`` (``(P, R)`` -> ``(dim, R)``): signed rows added into their buckets (a
    segment sum of whole rows: contiguous vector adds, an order of magnitude faster on CPU than gathering single
    elements)."""
    rows = rows * signs.astype(rows.dtype)[:, None]
    return jax.ops.segment_sum(rows, buckets, num_segments=dim)


def _layer_rows(a: jax.Array, g: jax.Array) -> jax.Array:
    """Per-example gradients of one structured layer as rows: ``(D·E, N·C')`` with ``[(d, e), (n, c)] =
    Σ_t a[n, t, d] g[n, c, t, e]``."""
    n, c, t, e = g.shape
    m = _per_example_grads(a, g)  # (N, D, C', E)
    return jnp.transpose(m, (1, 3, 0, 2)).reshape(a.shape[-1] * e, n * c)


def per_example_bytes(plan: Any, shapes: tuple, dim: int, summed: bool, itemsize: int) -> int:
    """Estimated peak bytes per example of a block: activations kept for the backward passes, the factors, one
    layer's per-example gradient (four copies: product, transposed, signed, sums) and the features."""
    c = 1 if summed else plan.n_classes
    act = sum(int(np.prod(s[0], dtype=np.int64)) for e in plan.prog.eqns for s in e.shapes)
    a_shapes, g_shapes, j_shapes = shapes
    fac = sum(int(np.prod(s.shape[1:], dtype=np.int64)) for s in (*a_shapes, *g_shapes, *j_shapes))
    layer = max([c * a.shape[-1] * g.shape[-1] for a, g in zip(a_shapes, g_shapes)] + [0])
    layer = max(layer, -(-layer // dim) * dim)
    return itemsize * ((2 + c) * act + 2 * fac + 4 * layer + 2 * c * dim)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StructuredProjection:
    """A CountSketch of per-example gradients computed from the structured layer factors (see module docstring).

    Attributes:
      key: typed PRNG key; leaf ``l`` hashes with ``fold_in(key, l)``.
      dim: feature dimension ``K`` (even, so that the two halves give an error estimate).
      block_size: examples sketched together (memory grows with it); None: automatic from the memory budget.
      memory_budget: bytes for the automatic block size (None: :func:`jaxcompare.ntk._memory.memory_budget`).
    """

    key: jax.Array
    dim: int = dataclasses.field(metadata=dict(static=True))
    block_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    memory_budget: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    kind = "structured"

    def block_for(self, apply_fn: Callable, params: Any, x: Any, *, summed: bool = False) -> int:
        """Examples per block: ``block_size``, or the largest (≤ 64) whose estimated memory fits the budget."""
        from ._memory import memory_budget

        n = x.shape[0]
        if self.block_size is not None:
            return min(self.block_size, n)
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype)
        shapes = jax.eval_shape(lambda p, xx: factors(plan, p, xx, summed=summed), params, x[:1])
        itemsize = jnp.dtype(jax.eval_shape(apply_fn, params, x[:1]).dtype).itemsize
        per = per_example_bytes(plan, shapes, self.dim, summed, max(itemsize, 4))
        budget = memory_budget(self.memory_budget) - 2 * n * plan.n_classes * self.dim * max(itemsize, 4)
        return int(max(1, min(n, _MAX_BLOCK, budget // max(per, 1))))

    def features(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool = False) -> jax.Array:
        """Sketched gradients ``(N, C, dim)`` (``(N, dim)`` when ``summed``: of the summed logits)."""
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype)
        n = x.shape[0]
        bs = self.block_for(apply_fn, params, x, summed=summed)
        a_s, g_s, j_s = jax.eval_shape(lambda p, xx: factors(plan, p, xx, summed=summed), params, x[:1])
        if not plan.uses and not plan.fallback:
            raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to project.")
        half = self.dim // 2

        def tables_of(leaf, size):  # two independent half-sketches of the leaf (see module docstring)
            kl = jax.random.fold_in(self.key, leaf)
            return [_hash_tables(jax.random.fold_in(kl, h), size, half) for h in range(2)]

        tables = [tables_of(u.leaf, a.shape[-1] * g.shape[-1]) for u, a, g in zip(plan.uses, a_s, g_s)]
        # the fallback leaves (often many small ones: norms) are sketched together, as one concatenated vector
        fb_table = tables_of(plan.n_leaves, sum(j.shape[-1] for j in j_s)) if j_s else None
        scale = 1.0 / np.sqrt(2.0)

        def sketch2(rows, tabs):  # (P, N·C') -> (dim, N·C'): both halves in one segment sum
            (ba, sa), (bb, sb) = tabs
            both = jnp.concatenate([rows * sa.astype(rows.dtype)[:, None], rows * sb.astype(rows.dtype)[:, None]])
            out = jax.ops.segment_sum(both, jnp.concatenate([ba, bb + half]), num_segments=self.dim)
            return out * jnp.asarray(scale, rows.dtype)

        def block(xb):
            a, g, j = factors(plan, params, xb, summed=summed)
            out = None
            for u in range(len(a)):  # one layer's per-example gradients alive at a time
                s = sketch2(_layer_rows(a[u], g[u]), tables[u])
                out = s if out is None else out + s
            if j:
                rows = jnp.concatenate([jnp.transpose(jm, (2, 0, 1)).reshape(jm.shape[2], -1) for jm in j])
                s = sketch2(rows, fb_table)
                out = s if out is None else out + s
            m, c = xb.shape[0], (a[0] if a else j[0]).shape[1] if not a else g[0].shape[1]
            return jnp.transpose(out.reshape(self.dim, m, c), (1, 2, 0))  # (m, C', dim)

        nb = -(-n // bs)
        if nb == 1:
            phi = block(x)
        else:
            xp = jnp.concatenate([x, jnp.broadcast_to(x[:1], (nb * bs - n,) + x.shape[1:])]) if nb * bs > n else x
            phi = jax.lax.map(block, xp.reshape((nb, bs) + x.shape[1:]))
            phi = phi.reshape((nb * bs,) + phi.shape[2:])[:n]
        return phi[:, 0] if summed else phi


def structured_projection(
    key: Any, dim: int, *, block_size: int | None = None, memory_budget: int | str | None = None
) -> StructuredProjection:
    """A structured sketch of per-example gradients: the fast, linear-in-N projection (see
    :mod:`jaxcompare.ntk._sketch` for the construction and its variance).

    Each layer's gradient is formed from its factors (inputs and output sensitivities) for one block of examples
    at a time and CountSketched into ``dim`` buckets; leaves without that structure (norms, shared weights) are
    CountSketched from their per-example gradients. ``E[<φ(x), φ(x')>] = <g(x), g(x')>`` with the variance of a
    dense Rademacher projection of the same dimension, at ``O(P)`` instead of ``O(dim · P)`` per gradient.
    Pass it as ``projection=`` to :func:`trace_ntk`/:func:`pseudo_ntk`, or to :func:`project_gradients`.

    Args:
      key: PRNG key (``jax.random.key(seed)``).
      dim: feature dimension ``K`` (even, ``>= 2``): the two halves give the error estimate of
        :func:`projected_kernel`.
      block_size: examples sketched together (memory ``∝ block_size``); default: the largest (≤ 64) that fits the
        memory budget.
      memory_budget: bytes (or ``"2G"``, or a fraction of the available memory) for the automatic block size;
        default ``JAXCOMPARE_MEMORY_BUDGET`` or half the available memory.

    Returns:
      A :class:`StructuredProjection`.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> proj = jc.structured_projection(jax.random.key(1), 256)
      >>> K = jc.trace_ntk(apply_fn, projection=proj)(params, x)
      >>> K.shape
      (10, 10)
      >>> bool(jnp.abs(K - jc.trace_ntk(apply_fn)(params, x)).max() < 0.1)   # close to the exact trNTK
      True

    References:
      M. Charikar, K. Chen, M. Farach-Colton, "Finding frequent items in data streams", ICALP 2002.
      D. Kane, J. Nelson, "Sparser Johnson–Lindenstrauss transforms", J. ACM 61(1), 2014.
      S. M. Park et al., "TRAK: Attributing model behavior at scale", ICML 2023 (projected gradients).
    """
    from ._memory import memory_budget as _budget

    key = check_key(key)
    dim = check_int(dim, "dim", min=2)
    if dim % 2:
        raise ValueError(f"dim must be even (its two halves give the error estimate), got dim={dim}.")
    if block_size is not None:
        block_size = check_int(block_size, "block_size", min=1)
    if memory_budget is not None:
        memory_budget = _budget(memory_budget)
    return StructuredProjection(key=key, dim=dim, block_size=block_size, memory_budget=memory_budget)
