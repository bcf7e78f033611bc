r"""Centered kernel alignment (CKA) of two kernels on the same points, biased or debiased.

For kernels ``K, L`` on the same ``n`` points and ``H = I - 11ᵀ/n`` (shared/spec/similarity.md):

- biased HSIC (Gretton et al. 2005): ``HSIC_b(K, L) = tr(K H L H) / (n - 1)²``;
- unbiased HSIC (Song et al. 2012), with ``K̃, L̃`` the kernels with zero diagonals:
  ``HSIC_u = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) - 2·1ᵀK̃L̃1/(n-2)] / (n(n-3))`` (``n >= 4``);
- ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (Kornblith et al. 2019).

Both HSICs are inner products of transformed kernels, which is how they are computed here:
``HSIC_b = <HKH, HLH>_F / (n - 1)²`` and ``HSIC_u = <U(K), U(L)>_F / (n(n-3))`` with the *U-centring*
(Székely & Rizzo 2014) ``U(K)_ij = K̃_ij - r_i/(n-2) - r_j/(n-2) + Σr/((n-1)(n-2))`` for ``i ≠ j`` and
``U(K)_ii = 0``, ``r = K̃1``. So ``HSIC_u(K, K) = ‖U(K)‖²_F/(n(n-3)) >= 0``, the debiased CKA obeys Cauchy–Schwarz
(``|CKA| <= 1``), and both transforms commute with a permutation of the points (used by the permutation test).

The biased estimator is large for independent data when the feature dimension exceeds ``n`` (≈ 0.67 at ``n = 32``,
64 independent Gaussian features each); the debiased one is centred on 0 (then it can be negative).

Linear CKA from features ``X (n, p)``, ``Y (n, q)`` (``K = XXᵀ``, ``L = YYᵀ``) never forms an ``n × n`` matrix: with
column-centred ``Xc, Yc``, ``<HKH, HLH> = ‖XcᵀYc‖²_F``; the U-centring is invariant to adding ``a_i + b_j`` to a
kernel, so the features may be centred first, and then (``k_i = ‖Xc_i‖²``, ``l_i = ‖Yc_i‖²``, ``1ᵀK̃1 = -Σk``,
``K̃1 = -k``) ``n(n-3)·HSIC_u = ‖XcᵀYc‖²_F - k·l + (Σk)(Σl)/((n-1)(n-2)) - 2 k·l/(n-2)``: ``O(n·(p² + q² + pq))``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._precision import HIGHEST  # noqa: F401 - re-exported to the area's modules
from .._validation import at_least_float32, check_array, check_finite, is_concrete

__all__ = ["cka", "linear_cka"]

# zero-variance threshold: TAU_FACTOR · sqrt(n) · eps(dtype) (relative, see _check_variance)
TAU_FACTOR = 8.0


def check_debiased(debiased: Any) -> bool:
    if not isinstance(debiased, (bool, np.bool_)):
        raise TypeError(f"debiased must be True or False, got {debiased!r} ({type(debiased).__name__}).")
    return bool(debiased)


def min_points(debiased: bool) -> int:
    return 4 if debiased else 2


def variance_tol(n: int, dtype: Any) -> float:
    """Relative level below which a centred kernel counts as zero: ``8 · sqrt(n) · eps(dtype)``."""
    return TAU_FACTOR * float(np.sqrt(n)) * float(jnp.finfo(dtype).eps)


def symmetry_tol(dtype: Any) -> float:
    """Allowed ``max|K - Kᵀ| / max|K|``: ``sqrt(eps(dtype))`` (float32: 3.5e-4, float64: 1.5e-8)."""
    return float(np.sqrt(jnp.finfo(dtype).eps))


@jax.jit
def _kernel_stats(K: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(all finite, max|K - Kᵀ|, max|K|)`` in fused reductions on the device (no host copy of ``K``)."""
    return jnp.all(jnp.isfinite(K)), jnp.max(jnp.abs(K - K.T)), jnp.max(jnp.abs(K))


def check_kernel(K: Any, name: str, *, n: int | None = None, debiased: bool = False) -> jax.Array:
    """A finite, square, symmetric ``(N, N)`` kernel with enough points; returns it as a floating array.

    Symmetry (concrete arrays only): ``max|K - Kᵀ| <= sqrt(eps) · max|K|``; within it, CKA is that of the symmetric
    part ``(K + Kᵀ)/2`` up to rounding (see :func:`center`).
    """
    a = at_least_float32(check_array(K, name, ndim=2, finite=False))  # finiteness below, on the device
    if a.shape[0] != a.shape[1]:
        raise ValueError(
            f"{name} must be a square (N, N) kernel on N points, got shape {a.shape}; "
            "for (N, N, C, C) kernels take the trace over classes first."
        )
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must be a kernel on the same N = {n} points as K1, got shape {a.shape}.")
    need = min_points(debiased)
    if a.shape[0] < need:
        raise ValueError(
            f"{name} has N = {a.shape[0]} points; {'debiased' if debiased else 'biased'} CKA needs N >= {need}."
        )
    if is_concrete(a):
        finite, asym, big = _kernel_stats(a)
        if not bool(finite):
            check_finite(a, name)  # raises, with counts
        asym, big = float(asym), float(big)
        tol = symmetry_tol(a.dtype)
        if asym > tol * big:
            raise ValueError(
                f"{name} must be symmetric: max|K - Kᵀ| = {asym:.3g} exceeds {tol:.2g} · max|K| "
                f"= {tol * big:.3g} (tolerance sqrt(eps) of {a.dtype}); pass a kernel K(x_i, x_j) on "
                "the same points on both axes."
            )
    return a


def common_dtype(*arrays: jax.Array) -> Any:
    return jnp.result_type(*(a.dtype for a in arrays))


def center(K: jax.Array) -> jax.Array:
    """``HSH`` plus the antisymmetric part ``E`` of ``K = S + E`` (means of the symmetric part ``S``).

    No symmetrized copy is formed: ``<HSH + E, HS'H + E'>_F = <HSH, HS'H>_F + <E, E'>_F`` (symmetric and
    antisymmetric matrices are orthogonal), so within the symmetry tolerance the result is that of ``S``.
    """
    m = (jnp.mean(K, axis=0) + jnp.mean(K, axis=1)) / 2
    return K - m[:, None] - m[None, :] + jnp.mean(K)


def u_center(K: jax.Array) -> jax.Array:
    """The U-centring ``U(S)`` of the symmetric part of ``K``, plus its off-diagonal antisymmetric part (as
    :func:`center`); needs ``n >= 4``."""
    n = K.shape[0]
    eye = jnp.eye(n, dtype=bool)
    Kt = jnp.where(eye, jnp.zeros((), K.dtype), K)
    r = (jnp.sum(Kt, axis=0) + jnp.sum(Kt, axis=1)) / 2
    U = Kt - r[:, None] / (n - 2) - r[None, :] / (n - 2) + jnp.sum(r) / ((n - 1) * (n - 2))
    return jnp.where(eye, jnp.zeros((), K.dtype), U)


def transform(K: jax.Array, debiased: bool) -> jax.Array:
    return u_center(K) if debiased else center(K)


def _ratio_or_zero(num: jax.Array, den: jax.Array) -> jax.Array:
    safe = jnp.where(den > 0, den, jnp.ones_like(den))
    return jnp.where(den > 0, num / safe, jnp.zeros_like(num))


def kernel_variance_ratio(K: jax.Array, T: jax.Array, debiased: bool) -> jax.Array:
    """How much of ``K`` its transform ``T`` keeps: biased ``‖HKH‖_F/‖K‖_F``; debiased ``‖U(K)‖_F/‖K̃‖_F``
    (``K̃``: ``K`` with a zero diagonal). Rounding in ``T`` is ``O(eps·‖K‖)``, so a ratio at that level means 0."""
    sq = jnp.sum(K * K)
    if debiased:
        sq = sq - jnp.sum(jnp.square(jnp.diagonal(K)))
    return _ratio_or_zero(jnp.sqrt(jnp.sum(T * T)), jnp.sqrt(jnp.maximum(sq, 0)))


@functools.partial(jax.jit, static_argnames=("debiased",))
def _kernel_parts(K1: jax.Array, K2: jax.Array, debiased: bool):
    A, B = transform(K1, debiased), transform(K2, debiased)
    parts = (jnp.sum(A * B), jnp.sum(A * A), jnp.sum(B * B))
    return parts, (kernel_variance_ratio(K1, A, debiased), kernel_variance_ratio(K2, B, debiased))


def alignment(cross: jax.Array, s1: jax.Array, s2: jax.Array) -> jax.Array:
    """``cross / sqrt(s1 · s2)``: the normalizations ``(n-1)²`` or ``n(n-3)`` cancel."""
    return cross / (jnp.sqrt(s1) * jnp.sqrt(s2))


def check_variance(ratio: Any, name: str, n: int, dtype: Any, debiased: bool, *, linear: bool = False) -> None:
    """Raise when a centred kernel is zero up to rounding (then CKA is 0/0)."""
    r = float(ratio)
    tol = variance_tol(n, dtype)
    if r > tol:
        return
    if debiased:
        measure = "‖U(K)‖²_F / ‖HKH‖²_F" if linear else "‖U(K)‖_F / ‖K̃‖_F"
        what = (
            f"its U-centred kernel is zero up to rounding ({measure} = {r:.3g} <= {tol:.2g}): after removing "
            "row/column effects and the diagonal nothing varies between pairs of points, so the debiased "
            "HSIC(K, K) is 0"
        )
        hint = "use more points or debiased=False"
    elif linear:
        what = (
            f"its features do not vary across points (‖X - mean‖_F / ‖X‖_F = {r:.3g} <= {tol:.2g}), so the "
            "centred kernel and HSIC(K, K) are 0"
        )
        hint = "pass features that differ between points"
    else:
        what = (
            f"its centred kernel is zero up to rounding (‖HKH‖_F / ‖K‖_F = {r:.3g} <= {tol:.2g}): the kernel "
            "is constant after centring (K_ij = a_i + a_j), so HSIC(K, K) is 0"
        )
        hint = "pass a kernel that differs between points"
    raise ValueError(
        f"CKA is undefined for {name}: {what} (tolerance 8·sqrt(N)·eps of {jnp.dtype(dtype).name}, N = {n}); {hint}."
    )


def cka(K1: Any, K2: Any, *, debiased: bool = False) -> jax.Array:
    r"""Centered kernel alignment of two ``(N, N)`` kernels on the same points.

    ``CKA(K1, K2) = HSIC(K1, K2) / sqrt(HSIC(K1, K1) · HSIC(K2, K2))`` with the biased HSIC
    ``tr(K1 H K2 H) / (N-1)²`` or, with ``debiased=True``, the unbiased HSIC of Song et al. (2012) (module
    docstring). The biased value lies in ``[0, 1]`` and is inflated for independent data when the kernels have high
    rank relative to ``N``; the debiased value is centred on 0 for independent data and lies in ``[-1, 1]``.
    Invariant to isotropic scaling of each kernel and, for linear kernels, to orthogonal transforms of the features.

    Both kernels must be symmetric up to ``sqrt(eps) · max|K|`` (float32: 3.5e-4, float64: 1.5e-8 relative); they
    are treated as their symmetric parts ``(K + Kᵀ)/2``. A kernel whose centred (debiased: U-centred) part is
    zero up to rounding (relative level ``8·sqrt(N)·eps``; e.g. a constant kernel) raises ``ValueError``. Under
    ``jax.jit``/``vmap`` only shapes are checked; such kernels then give NaN. Under ``jax.jit`` pass ``debiased``
    statically (``functools.partial(cka, debiased=True)``).

    Args:
      K1, K2: ``(N, N)`` kernels on the same points (``N >= 2``; ``N >= 4`` when debiased).
      debiased: use the unbiased HSIC estimator.

    Returns:
      Scalar ``jax.Array`` in the promoted floating dtype of ``K1`` and ``K2``.

    Example:
      >>> from jaxcompare.similarity import cka
      >>> kx, ky = jax.random.split(jax.random.key(0))
      >>> X = jax.random.normal(kx, (32, 64))
      >>> Y = jax.random.normal(ky, (32, 64))                  # independent of X
      >>> K, L = X @ X.T, Y @ Y.T
      >>> print(f"{cka(K, L):.2f} {cka(K, L, debiased=True):.2f}")   # biased is inflated, debiased near 0
      0.69 -0.01
      >>> print(f"{cka(K, 3.0 * K):.4f}")                      # invariant to scaling
      1.0000

    References:
      Kornblith, Norouzi, Lee, Hinton, "Similarity of neural network representations revisited", ICML 2019.
      Gretton, Bousquet, Smola, Schölkopf, "Measuring statistical dependence with Hilbert–Schmidt norms", ALT 2005.
      Song, Smola, Gretton, Bedo, Borgwardt, "Feature selection via dependence maximization", JMLR 13, 2012.
    """
    debiased = check_debiased(debiased)
    K1 = check_kernel(K1, "K1", debiased=debiased)
    K2 = check_kernel(K2, "K2", n=K1.shape[0], debiased=debiased)
    dtype = common_dtype(K1, K2)
    K1, K2 = K1.astype(dtype), K2.astype(dtype)
    (cross, s1, s2), (r1, r2) = _kernel_parts(K1, K2, debiased)
    if is_concrete(r1) and is_concrete(r2):
        n = K1.shape[0]
        check_variance(r1, "K1", n, dtype, debiased)
        check_variance(r2, "K2", n, dtype, debiased)
    return alignment(cross, s1, s2)


def _u_hsic(sq: jax.Array, k: jax.Array, l: jax.Array, n: int) -> jax.Array:
    """``n(n-3)·HSIC_u`` of linear kernels from ``‖XcᵀYc‖²`` and the squared row norms ``k``, ``l``."""
    kl = jnp.dot(k, l, precision=HIGHEST)
    return sq - kl + jnp.sum(k) * jnp.sum(l) / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)


def _pow2_unit(A: jax.Array) -> jax.Array:
    """``A`` divided by the power of two nearest its largest magnitude (exact): CKA is scale-free, and the fourth
    powers of the feature scale in ``‖XcᵀXc‖²`` overflowed float32 at ×1e9 and underflowed at ×1e-12."""
    m = jnp.max(jnp.abs(A))
    return A / jnp.where(m > 0, jnp.exp2(jnp.round(jnp.log2(jnp.where(m > 0, m, 1)))), 1).astype(A.dtype)


@functools.partial(jax.jit, static_argnames=("debiased",))
def _linear_parts(X: jax.Array, Y: jax.Array, debiased: bool):
    n = X.shape[0]
    X, Y = _pow2_unit(X), _pow2_unit(Y)
    Xc = X - jnp.mean(X, axis=0, keepdims=True)
    Yc = Y - jnp.mean(Y, axis=0, keepdims=True)
    xy = jnp.sum(jnp.square(jnp.matmul(Xc.T, Yc, precision=HIGHEST)))
    xx = jnp.sum(jnp.square(jnp.matmul(Xc.T, Xc, precision=HIGHEST)))
    yy = jnp.sum(jnp.square(jnp.matmul(Yc.T, Yc, precision=HIGHEST)))
    if not debiased:
        r1 = _ratio_or_zero(jnp.sqrt(jnp.sum(Xc * Xc)), jnp.sqrt(jnp.sum(X * X)))
        r2 = _ratio_or_zero(jnp.sqrt(jnp.sum(Yc * Yc)), jnp.sqrt(jnp.sum(Y * Y)))
        return (xy, xx, yy), (r1, r2)
    k = jnp.sum(Xc * Xc, axis=1)
    l = jnp.sum(Yc * Yc, axis=1)
    s1, s2 = _u_hsic(xx, k, k, n), _u_hsic(yy, l, l, n)
    return (_u_hsic(xy, k, l, n), s1, s2), (_ratio_or_zero(s1, xx), _ratio_or_zero(s2, yy))


def check_features(X: Any, name: str, *, n: int | None = None, debiased: bool = False) -> jax.Array:
    a = at_least_float32(check_array(X, name, ndim=2))
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have one row per point, the same N = {n} as X; got shape {a.shape}.")
    need = min_points(debiased)
    if a.shape[0] < need:
        raise ValueError(
            f"{name} has N = {a.shape[0]} points (rows); {'debiased' if debiased else 'biased'} CKA needs N >= {need}."
        )
    return a


def linear_cka(X: Any, Y: Any, *, debiased: bool = False) -> jax.Array:
    r"""Linear CKA of two feature matrices on the same points, without forming ``N × N`` kernels.

    Equals ``cka(X @ X.T, Y @ Y.T, debiased=debiased)``. Biased:
    ``‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)`` with column-centred ``Xc, Yc``; debiased: the unbiased HSIC written with
    the row norms of the centred features (module docstring). Cost ``O(N·(p² + q² + pq))`` time and
    ``O(p² + q² + pq)`` memory; when ``p`` or ``q`` exceeds ``N``, ``cka(X @ X.T, Y @ Y.T)`` is cheaper.

    Features with no variance across points (relative level ``8·sqrt(N)·eps``), or, when debiased, a U-centred
    kernel that is zero up to rounding, raise ``ValueError`` eagerly (NaN under ``jit``/``vmap``, where only shapes
    are checked).

    Args:
      X: ``(N, p)`` features; Y: ``(N, q)`` features of the same ``N`` points (``N >= 4`` when debiased).
      debiased: use the unbiased HSIC estimator.

    Returns:
      Scalar ``jax.Array`` in the promoted floating dtype of ``X`` and ``Y``.

    Example:
      >>> from jaxcompare.similarity import cka, linear_cka
      >>> kx, ky = jax.random.split(jax.random.key(0))
      >>> X = jax.random.normal(kx, (100, 8))
      >>> Y = jnp.tanh(X @ jax.random.normal(ky, (8, 5)))      # a nonlinear function of X
      >>> print(f"{linear_cka(X, Y):.4f} {linear_cka(X, Y, debiased=True):.4f}")
      0.5763 0.5610
      >>> bool(jnp.allclose(linear_cka(X, Y), cka(X @ X.T, Y @ Y.T), rtol=1e-4))
      True

    References:
      Kornblith et al., ICML 2019; Song et al., JMLR 2012 (see :func:`cka`).
    """
    debiased = check_debiased(debiased)
    X = check_features(X, "X", debiased=debiased)
    Y = check_features(Y, "Y", n=X.shape[0], debiased=debiased)
    dtype = common_dtype(X, Y)
    X, Y = X.astype(dtype), Y.astype(dtype)
    (cross, s1, s2), (r1, r2) = _linear_parts(X, Y, debiased)
    if is_concrete(r1) and is_concrete(r2):
        n = X.shape[0]
        check_variance(r1, "X", n, dtype, debiased, linear=True)
        check_variance(r2, "Y", n, dtype, debiased, linear=True)
    return alignment(cross, s1, s2)
