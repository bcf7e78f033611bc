"""Kronecker-factored projection of parameter gradients (shared/spec/ntk.md, "Projected kernels").

For a layer whose gradient is ``g_c = Σ_t a_t ⊗ δ_{c,t}`` (dense layers: one position; convolutions: patches; see
:mod:`jaxcompare.ntk._structured`), project with ``R = R_in ⊗ R_out``::

    R g_c = Σ_t (R_in a_t) ⊗ (R_out δ_{c,t})

at cost ``O(T (k_in D + k_out E))`` per example and class instead of ``O(k D E)``; ``R`` is never formed.
``R_in`` (``k_in × D``) and ``R_out`` (``k_out × E``) have iid Rademacher ``±1/√k`` or Gaussian ``N(0, 1/k)``
entries, so ``E[R_inᵀ R_in] = I``, ``E[R_outᵀ R_out] = I`` and, by independence, ``E[Rᵀ R] = I``: the projected
kernel is unbiased. A factor is not projected (identity, exact) when its dimension is at most the requested one.
A bias fused with its layer is the constant input feature 1, so ``R_in`` acts on ``[a; 1]``.
Leaves without that structure (shared weights, norms...) are projected by a dense random matrix with
``k_in · k_out`` rows generated in blocks from the key, or kept exact when they have at most that many entries.
Different layers use independent matrices (``R`` is block-diagonal over leaves), which keeps it unbiased.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_choice, check_int, check_key
from ._common import HIGHEST
from ._structured import analyze, factors

__all__ = ["KroneckerProjection", "kronecker_projection"]

_KINDS = ("rademacher", "gaussian")
_ROW_BLOCK = 256


def _matrix(key: jax.Array, rows: int, cols: int, kind: str, dtype: Any) -> jax.Array:
    if kind == "rademacher":
        r = jax.random.rademacher(key, (rows, cols), dtype=dtype)
    else:
        r = jax.random.normal(key, (rows, cols), dtype=dtype)
    return r * jnp.asarray(1.0 / math.sqrt(rows), dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KroneckerProjection:
    """A Kronecker-factored random projection (see module docstring); pass as ``projection=`` to
    :func:`trace_ntk` / :func:`pseudo_ntk`.

    Attributes:
      key: typed PRNG key; the factors of leaf ``l`` come from ``fold_in(key, l)``.
      dim_in: rows of ``R_in`` (per layer, at most the layer's input dimension).
      dim_out: rows of ``R_out`` (per layer, at most the layer's output dimension).
      kind: ``"rademacher"`` or ``"gaussian"``.
    """

    key: jax.Array
    dim_in: int = dataclasses.field(metadata=dict(static=True))
    dim_out: int = dataclasses.field(metadata=dict(static=True))
    kind: str = dataclasses.field(default="rademacher", metadata=dict(static=True))

    def feature_dim(self, apply_fn: Callable, params: Any, x: Any) -> int:
        """Total projected dimension for this model (the sum over layers and other leaves)."""
        x = jnp.asarray(x)
        shapes = jax.eval_shape(lambda p, xx: self.features(apply_fn, p, xx, summed=True), params, x[:1])
        return int(shapes.shape[-1])

    def features(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool = False) -> jax.Array:
        """Projected gradients ``(N, C, k)`` (``(N, k)`` when ``summed``: of the summed logits)."""
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype)
        a, g, j = factors(plan, params, x, summed=summed)
        blocks = []
        for u, am, gm in zip(plan.uses, a, g):
            kl = jax.random.fold_in(self.key, u.leaf)
            d, e = am.shape[-1], gm.shape[-1]
            if self.dim_in < d:
                am = jnp.einsum(
                    "ntd,kd->ntk",
                    am,
                    _matrix(jax.random.fold_in(kl, 0), self.dim_in, d, self.kind, am.dtype),
                    precision=HIGHEST,
                )
            if self.dim_out < e:
                gm = jnp.einsum(
                    "ncte,ke->nctk",
                    gm,
                    _matrix(jax.random.fold_in(kl, 1), self.dim_out, e, self.kind, gm.dtype),
                    precision=HIGHEST,
                )
            f = jnp.einsum("ntk,nctl->nckl", am, gm, precision=HIGHEST)
            blocks.append(f.reshape(f.shape[0], f.shape[1], -1))
        k_dense = self.dim_in * self.dim_out
        for l, jm in zip(plan.fallback, j):
            p = jm.shape[-1]
            if p <= k_dense:
                blocks.append(jm)
                continue
            kl = jax.random.fold_in(self.key, l)
            n_blocks = -(-k_dense // _ROW_BLOCK)

            def one(b, jm=jm, kl=kl, p=p):
                r = _matrix(jax.random.fold_in(kl, b), _ROW_BLOCK, p, self.kind, jm.dtype)
                r = r * jnp.asarray(math.sqrt(_ROW_BLOCK / k_dense), jm.dtype)  # entries scaled by 1/sqrt(k)
                mask = (b * _ROW_BLOCK + jnp.arange(_ROW_BLOCK) < k_dense).astype(jm.dtype)
                return jnp.einsum("ncp,kp->nck", jm, r, precision=HIGHEST) * mask[None, None, :]

            out = jax.lax.map(one, jnp.arange(n_blocks))  # (blocks, N, C', ROW_BLOCK)
            out = jnp.moveaxis(out, 0, 2).reshape(jm.shape[0], jm.shape[1], -1)[..., :k_dense]
            blocks.append(out)
        if not blocks:
            raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to project.")
        phi = jnp.concatenate(blocks, axis=-1)
        return phi[:, 0] if summed else phi


def kronecker_projection(
    key: Any, dim_in: int, dim_out: int | None = None, kind: str = "rademacher"
) -> KroneckerProjection:
    """A Kronecker-factored random projection ``R = R_in ⊗ R_out`` per layer (not in any peer library).

    For a dense layer ``z = W a`` the per-example gradient of logit ``c`` is ``δ_c aᵀ``; it is projected to
    ``(R_out δ_c)(R_in a)ᵀ`` without forming it: ``O(k_in d_in + k_out d_out)`` per example and class instead of
    ``O(k d_in d_out)`` for a dense ``R`` — the layer inputs ``a`` and sensitivities ``δ`` come from the structured
    analysis (dense layers, convolutions with patches as inputs, biases as a constant input). Unbiased:
    ``E[<R g, R g'>] = <g, g'>``. Each layer contributes ``min(dim_in, d_in) · min(dim_out, d_out)`` features;
    other leaves ``min(P_leaf, dim_in · dim_out)``.

    Args:
      key: PRNG key.
      dim_in: rows of each input factor ``R_in``.
      dim_out: rows of each output factor ``R_out`` (default ``dim_in``).
      kind: ``"rademacher"`` (±1/√k) or ``"gaussian"`` (N(0, 1/k)).

    Returns:
      A :class:`KroneckerProjection`.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> proj = jc.kronecker_projection(jax.random.key(1), 8, 8)
      >>> K = jc.trace_ntk(apply_fn, projection=proj)(params, x)
      >>> K.shape
      (10, 10)
      >>> proj.feature_dim(apply_fn, params, x)   # 3·8 (layer 1: input 3 kept exact) + 8·2 (layer 2), of P = 80
      40
    """
    key = check_key(key)
    dim_in = check_int(dim_in, "dim_in", min=1)
    dim_out = dim_in if dim_out is None else check_int(dim_out, "dim_out", min=1)
    check_choice(kind, "kind", _KINDS)
    return KroneckerProjection(key=key, dim_in=dim_in, dim_out=dim_out, kind=kind)
