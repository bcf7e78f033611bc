r"""Permutation test for CKA: is the alignment of two kernels larger than that of unrelated points?

Under the null hypothesis that the points of one side are exchangeable with respect to the other, permuting the
points of ``K2`` (``K2[π][:, π]``) leaves its distribution unchanged. With ``T`` the observed CKA and ``T_b`` the CKA
after permutation ``π_b``, ``b = 1..B``:

    ``p = (1 + #{b : T_b >= T}) / (1 + B)``

which is a valid p-value (``P(p <= α) <= α``) whatever ``B`` (Phipson & Smyth 2010). Values within ``16·eps`` of
``T`` count as ties (``T_b >= T``), so that a permutation that maps the kernel onto itself is never lost to
rounding.

Cost: the centring (biased: ``HKH``; debiased: the U-centring) commutes with permutations, and so do the
self-terms ``HSIC(K, K)``: they are computed once; each permutation costs one gather and one inner product of
``N × N`` matrices, ``O(N²)``. Permutations run vectorized in chunks of at most ``2**24 / N²`` (at least 1), so
memory stays ``O(chunk · N²)`` whatever ``B`` (under an outer ``jax.vmap`` of ``m`` tests, ``m`` times that: map
many small tests with ``jax.lax.map(..., batch_size=...)`` instead).

Permutation ``b`` (0-based) is ``jax.random.permutation(jax.random.split(key, B)[b], N)``: the same key gives the
same permutations and the same result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_int, check_key, is_concrete
from ._cka import (
    HIGHEST,
    alignment,
    check_debiased,
    check_kernel,
    check_variance,
    common_dtype,
    kernel_variance_ratio,
    transform,
)

__all__ = ["cka_test", "CKATest"]

# elements of permuted kernels held at once (chunk · M · N²)
_CHUNK_ELEMENTS = 2**24
# numerical ties: T_b >= T - TIE_EPS · eps(dtype) counts as T_b >= T (CKA is scale-free, so this is relative)
TIE_EPS = 16.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CKATest:
    """Result of :func:`cka_test`.

    Attributes:
      statistic: the observed CKA ``T``.
      p_value: ``(1 + #{b : T_b >= T}) / (1 + B)``.
      null_mean: mean of the ``B`` permuted CKAs.
      null_sd: their standard deviation (``ddof=1``; 0 when ``B = 1``).
      null: ``(B,)`` the permuted CKAs ``T_b``.
      n_permutations: ``B``.
      debiased: whether the unbiased HSIC was used.
    """

    statistic: jax.Array
    p_value: jax.Array
    null_mean: jax.Array
    null_sd: jax.Array
    null: jax.Array
    n_permutations: int = dataclasses.field(metadata=dict(static=True))
    debiased: bool = dataclasses.field(metadata=dict(static=True))


def chunk_size(n_permutations: int, n_points: int, n_kernels: int) -> int:
    return max(1, min(n_permutations, _CHUNK_ELEMENTS // max(1, n_kernels * n_points * n_points)))


def permuted_inner(key: jax.Array, A: jax.Array, B: jax.Array, n_permutations: int, chunk: int) -> jax.Array:
    """``(n_permutations, M1, M2)``: ``<A_i, B_j[π_b][:, π_b]>_F`` for stacks ``A (M1, N, N)``, ``B (M2, N, N)``."""
    n = A.shape[-1]
    keys = jax.random.split(key, n_permutations)
    Af = A.reshape(A.shape[0], -1)

    def one(k):
        perm = jax.random.permutation(k, n)
        Bp = jnp.take(B, perm, axis=1)[:, :, perm]  # rows, then columns: faster than one 2-D gather on CPU
        if A.shape[0] == 1 and B.shape[0] == 1:  # one pair: a fused multiply-sum beats a (1, N²) x (N², 1) matmul
            return jnp.sum(A * Bp, axis=(1, 2), keepdims=True)[:, :, 0]
        return jnp.matmul(Af, Bp.reshape(B.shape[0], -1).T, precision=HIGHEST)

    return jax.lax.map(one, keys, batch_size=chunk)


def p_values(null: jax.Array, statistic: jax.Array) -> jax.Array:
    """``(1 + #{T_b >= T - 16 eps}) / (1 + B)`` along axis 0 of ``null``."""
    eps = jnp.finfo(null.dtype).eps
    count = jnp.sum(null >= (statistic - TIE_EPS * eps)[None], axis=0)
    return ((1 + count) / (1 + null.shape[0])).astype(null.dtype)


def null_moments(null: jax.Array) -> tuple[jax.Array, jax.Array]:
    b = null.shape[0]
    mean = jnp.mean(null, axis=0)
    sd = jnp.std(null, axis=0, ddof=1) if b > 1 else jnp.zeros_like(mean)
    return mean, sd


@functools.partial(jax.jit, static_argnames=("debiased",))
def _prepare(K1: jax.Array, K2: jax.Array, debiased: bool):
    A, B = transform(K1, debiased), transform(K2, debiased)
    s1, s2 = jnp.sum(A * A), jnp.sum(B * B)
    ratios = (kernel_variance_ratio(K1, A, debiased), kernel_variance_ratio(K2, B, debiased))
    return A, B, alignment(jnp.sum(A * B), s1, s2), s1, s2, ratios


@functools.partial(jax.jit, static_argnames=("n_permutations", "chunk"))
def _null(key, A, B, s1, s2, n_permutations: int, chunk: int):
    cross = permuted_inner(key, A[None], B[None], n_permutations, chunk)[:, 0, 0]
    return alignment(cross, s1, s2)


def cka_test(key: Any, K1: Any, K2: Any, *, n_permutations: int = 999, debiased: bool = True) -> CKATest:
    r"""Permutation test of the CKA of two ``(N, N)`` kernels on the same points.

    The statistic ``T = cka(K1, K2, debiased=debiased)`` is compared with ``T_b = cka(K1, K2[π_b][:, π_b])`` for
    ``B = n_permutations`` random permutations of the points of ``K2``:
    ``p = (1 + #{b : T_b >= T}) / (1 + B)`` (one-sided: more aligned than by chance). The biased CKA of unrelated
    high-rank kernels is far from 0 and the null mean shows by how much; calibration against the null removes this
    (Gröger et al. 2026). See the module docstring for cost, memory and how permutations derive from ``key``.

    Input checks as for :func:`cka` (square, same ``N``, finite, symmetric up to ``sqrt(eps)·max|K|``, a centred
    kernel not zero up to rounding); works under ``jax.jit`` (with ``n_permutations``/``debiased`` static) and
    ``jax.vmap`` over keys or kernels, where only shapes are checked.

    Args:
      key: a ``jax.random.key``; the permutations are drawn from it.
      K1, K2: ``(N, N)`` kernels (``N >= 2``; ``N >= 4`` when debiased).
      n_permutations: ``B >= 1``.
      debiased: use the unbiased HSIC (default, recommended: its null is centred on 0).

    Returns:
      :class:`CKATest` with ``statistic``, ``p_value``, ``null_mean``, ``null_sd``, ``null``, ``n_permutations``.

    Example:
      >>> from jaxcompare.similarity import cka_test
      >>> kx, ky, kt = jax.random.split(jax.random.key(0), 3)
      >>> X = jax.random.normal(kx, (40, 8))
      >>> Y = X @ jax.random.normal(ky, (8, 8)) + jax.random.normal(kt, (40, 8))   # related to X
      >>> res = cka_test(jax.random.key(1), X @ X.T, Y @ Y.T, n_permutations=199)
      >>> print(f"T = {res.statistic:.3f}, p = {res.p_value:.3f}, null {res.null_mean:+.3f} ± {res.null_sd:.3f}")
      T = 0.625, p = 0.005, null -0.000 ± 0.038

    References:
      Gröger et al. (2026), permutation calibration of representational similarity; Phipson & Smyth, "Permutation
      p-values should never be zero", Stat. Appl. Genet. Mol. Biol. 9 (2010).
    """
    key = check_key(key)
    debiased = check_debiased(debiased)
    n_permutations = check_int(n_permutations, "n_permutations", min=1)
    K1 = check_kernel(K1, "K1", debiased=debiased)
    K2 = check_kernel(K2, "K2", n=K1.shape[0], debiased=debiased)
    dtype = common_dtype(K1, K2)
    K1, K2 = K1.astype(dtype), K2.astype(dtype)
    n = K1.shape[0]
    A, B, stat, s1, s2, (r1, r2) = _prepare(K1, K2, debiased)
    if is_concrete(r1) and is_concrete(r2):
        check_variance(r1, "K1", n, dtype, debiased)
        check_variance(r2, "K2", n, dtype, debiased)
    null = _null(key, A, B, s1, s2, n_permutations, chunk_size(n_permutations, n, 1))
    mean, sd = null_moments(null)
    return CKATest(stat, p_values(null, stat), mean, sd, null, n_permutations, debiased)
