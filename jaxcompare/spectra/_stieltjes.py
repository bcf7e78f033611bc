"""Empirical Stieltjes transforms and the distance between spectra measured through them."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_array

__all__ = ["empirical_stieltjes", "stieltjes_distance"]


def empirical_stieltjes(eigenvalues, z) -> jax.Array:
    r"""Stieltjes transform of the empirical spectral measure, :math:`m_n(z) = \frac1n \sum_i \frac{1}{λ_i - z}`.

    Works under ``jit``/``vmap`` (batch axes of ``eigenvalues`` lead; the last axis holds the spectrum).

    Args:
      eigenvalues: ``(..., n)`` real eigenvalues.
      z: complex points, shape ``(m,)`` or scalar.

    Returns:
      complex array ``(..., m)`` (or ``(...,)`` for scalar ``z``).

    Example:
      >>> complex(empirical_stieltjes(jnp.array([1.0, 3.0]), 2.0 + 1.0j))
      0.5j
    """
    lam = check_array(eigenvalues, "eigenvalues", ndim=None)
    if lam.ndim < 1:
        raise ValueError("eigenvalues must have at least one axis, got a scalar.")
    zz = jnp.asarray(z)
    if not jnp.issubdtype(zz.dtype, jnp.complexfloating):
        zz = zz.astype(jnp.result_type(lam.dtype, jnp.complex64))
    scalar = zz.ndim == 0
    zz = jnp.atleast_1d(zz)
    if zz.ndim != 1:
        raise ValueError(f"z must be a scalar or 1-D, got shape {zz.shape}.")
    zb = zz.reshape((1,) * (lam.ndim - 1) + zz.shape + (1,))
    out = jnp.mean(1.0 / (lam[..., None, :] - zb), axis=-1)
    return out[..., 0] if scalar else out


def stieltjes_distance(eigenvalues, limit_stieltjes, z) -> np.ndarray:
    """``max_z |m_n(z) − m(z)|``: distance of an empirical spectrum to a limiting law (host float64).

    Compare spectra through Stieltjes transforms at ``Im z ≈ 0.1`` (KS distances are fragile near atoms).

    Args:
      eigenvalues: ``(..., n)`` real eigenvalues.
      limit_stieltjes: complex values of the limiting transform at ``z`` (shape ``(m,)``), e.g. from
        :func:`mp_stieltjes` or :func:`fan_wang_stieltjes`.
      z: ``(m,)`` complex points.

    Returns:
      float64 array ``(...)``.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    z = np.atleast_1d(np.asarray(z, dtype=np.complex128))
    m = np.asarray(limit_stieltjes, dtype=np.complex128).reshape(z.shape)
    emp = np.mean(1.0 / (lam[..., None, :] - z[:, None]), axis=-1)
    return np.max(np.abs(emp - m), axis=-1)
