"""Symmetric eigenvalue helpers for the recorder.

On CPU, ``jnp.linalg.eigh`` always computes eigenvectors; the spectra recorded during training need eigenvalues only,
which LAPACK's ``syevd`` with ``jobz='N'`` computes several times faster. The ``"lapack"`` backend calls
``scipy.linalg.eigh(..., eigvals_only=True)`` through ``jax.pure_callback`` (works under ``jit``, ``vmap`` and
inside ``lax.scan``); the ``"jax"`` backend stays on device (use it on GPU/TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["eigvalsh_desc", "eigh_top", "default_eig_backend"]


def default_eig_backend() -> str:
    return "lapack" if jax.default_backend() == "cpu" else "jax"


def _host_eigvalsh(m):
    import scipy.linalg

    m = np.asarray(m)
    flat = m.reshape((-1,) + m.shape[-2:])
    out = np.full(flat.shape[:-1], np.nan, dtype=m.dtype)
    for i in range(flat.shape[0]):
        if np.all(np.isfinite(flat[i])):  # a non-finite matrix (a failed run) gets NaN, not a LAPACK error
            out[i] = scipy.linalg.eigh(flat[i], eigvals_only=True, driver="evd", check_finite=False)
    return out.reshape(m.shape[:-1])


def _host_eigh(m):
    import scipy.linalg

    m = np.asarray(m)
    flat = m.reshape((-1,) + m.shape[-2:])
    w = np.full(flat.shape[:-1], np.nan, dtype=m.dtype)
    v = np.full(flat.shape, np.nan, dtype=m.dtype)
    for i in range(flat.shape[0]):
        if np.all(np.isfinite(flat[i])):
            w[i], v[i] = scipy.linalg.eigh(flat[i], driver="evd", check_finite=False)
    return w.reshape(m.shape[:-1]), v.reshape(m.shape)


def eigvalsh_desc(m: jax.Array, backend: str) -> jax.Array:
    """Eigenvalues of a symmetric ``(n, n)`` matrix in descending order."""
    if backend == "lapack":
        sym = 0.5 * (m + m.T)
        w = jax.pure_callback(
            _host_eigvalsh, jax.ShapeDtypeStruct(m.shape[:-1], m.dtype), sym, vmap_method="expand_dims"
        )
    else:
        w = jnp.linalg.eigvalsh(m)
    return w[::-1]


def eigh_top(m: jax.Array, backend: str) -> tuple[jax.Array, jax.Array]:
    """All eigenvalues (descending) and the eigenvectors as columns in the same order."""
    if backend == "lapack":
        sym = 0.5 * (m + m.T)
        w, v = jax.pure_callback(
            _host_eigh,
            (jax.ShapeDtypeStruct(m.shape[:-1], m.dtype), jax.ShapeDtypeStruct(m.shape, m.dtype)),
            sym,
            vmap_method="expand_dims",
        )
    else:
        w, v = jnp.linalg.eigh(m)
    return w[::-1], v[:, ::-1]
