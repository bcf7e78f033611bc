"""Randomized truncated SVD (Halko, Martinsson & Tropp 2011) with power iterations and an explicit key."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import at_least_float32, check_array, check_int, check_key
from ._common import mm

__all__ = ["randomized_svd"]


@partial(jax.jit, static_argnames=("k", "n_oversamples", "n_iter"))
def _randomized_svd(key: jax.Array, A: jax.Array, k: int, n_oversamples: int, n_iter: int):
    n, d = A.shape
    if n < d:  # iterate on the short side: work with A^T and swap the factors
        U, s, Vt = _randomized_svd(key, A.T, k, n_oversamples, n_iter)
        return Vt.T, s, U.T
    ell = min(k + n_oversamples, d)
    W, _ = jnp.linalg.qr(jax.random.normal(key, (d, ell), dtype=A.dtype))

    def power_step(_, W):  # subspace iteration on A^T A, re-orthonormalised on the short (d x ell) side
        W, _ = jnp.linalg.qr(mm(A.T, mm(A, W)))
        return W

    W = jax.lax.fori_loop(0, n_iter, power_step, W)
    Q, _ = jnp.linalg.qr(mm(A, W))  # the only QR of a tall (n x ell) matrix
    B = mm(Q.T, A)  # (ell, d)
    Ub, S, Vt = jnp.linalg.svd(B, full_matrices=False)
    U = mm(Q, Ub)
    return U[:, :k], S[:k], Vt[:k]


def randomized_svd(
    key: Any, A: Any, k: int, *, n_oversamples: int = 10, n_iter: int = 7
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Truncated SVD :math:`A \approx U_k \operatorname{diag}(s_k) V_k^\top` by randomized range finding.

    With a Gaussian test matrix :math:`\Omega \in \mathbb{R}^{d\times \ell}`, :math:`\ell = k + p` (for
    :math:`n \ge d`; otherwise the same on :math:`A^\top`), subspace iteration :math:`W \leftarrow
    \operatorname{qr}(A^\top A W)` runs :math:`q` times from :math:`W = \operatorname{qr}(\Omega)`, re-orthonormalising
    after every step on the short side (a :math:`d\times\ell` QR; tall QRs are slow on CPU). Then
    :math:`Q = \operatorname{qr}(AW)` spans the approximate range, :math:`B = Q^\top A` is small and its exact SVD
    gives :math:`U = QU_B`. Directions with :math:`\sigma_i < \sqrt{\epsilon}\,\sigma_1` are not resolved (float32:
    :math:`3\cdot 10^{-4}\sigma_1`). The error decays like :math:`(\sigma_{k+1}/\sigma_k)^{2q+1}`; the default
    ``n_iter=7`` (as scikit-learn's ``n_iter='auto'`` for small :math:`k`) suits the slowly decaying spectra of
    embedding matrices. Cost :math:`O((2q+2)\, n d \ell)` flops and :math:`O((n+d)\ell)` extra memory.

    Args:
      key: PRNG key (``jax.random.key``) for the test matrix; same key, same result.
      A: matrix of shape ``(n, d)``, floating (dtype kept).
      k: number of singular triplets, ``1 <= k <= min(n, d)``.
      n_oversamples: extra columns :math:`p` of the test matrix (default 10).
      n_iter: power iterations :math:`q` (default 7).

    Returns:
      ``(U, s, Vt)`` with shapes ``(n, k)``, ``(k,)``, ``(k, d)``; ``s`` in decreasing order.

    Example:
      >>> A = jax.random.normal(jax.random.key(1), (60, 10)) @ jax.random.normal(jax.random.key(2), (10, 30))
      >>> U, s, Vt = embed.randomized_svd(jax.random.key(0), A, 10)
      >>> U.shape, s.shape, Vt.shape
      ((60, 10), (10,), (10, 30))
      >>> bool(jnp.allclose(s, jnp.linalg.svd(A, compute_uv=False)[:10], rtol=1e-4))   # rank 10: exact
      True

    References:
      N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness", SIAM Review 53(2), 2011.
    """
    key = check_key(key)
    A = at_least_float32(check_array(A, "A", ndim=2))  # no half-precision SVD/QR kernels
    k = check_int(k, "k", min=1, max=min(A.shape))
    n_oversamples = check_int(n_oversamples, "n_oversamples", min=0)
    n_iter = check_int(n_iter, "n_iter", min=0)
    return _randomized_svd(key, A, k, n_oversamples, n_iter)
