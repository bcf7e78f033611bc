"""Empirical Stieltjes transforms and the distance between spectra measured through them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_range
from .._validation import check_array, check_finite, check_upper_half_plane, is_concrete

__all__ = ["empirical_stieltjes", "stieltjes_distance"]


def empirical_stieltjes(eigenvalues, z) -> jax.Array:
    r"""Stieltjes transform of the empirical spectral measure, :math:`m_n(z) = \frac1n \sum_i \frac{1}{λ_i - z}`.

    Works under ``jit``/``vmap`` (batch axes of ``eigenvalues`` lead; the last axis holds the spectrum).

    Args:
      eigenvalues: ``(..., n)`` real, finite eigenvalues.
      z: finite complex points with ``Im z > 0`` (where the transform is single-valued and no point can hit an
        eigenvalue), shape ``(m,)`` or scalar; others raise ``ValueError`` (checked eagerly, and under ``jit``
        inside :func:`jaxcompare.checked`).

    Returns:
      complex array ``(..., m)`` (or ``(...,)`` for scalar ``z``).

    Example:
      >>> complex(empirical_stieltjes(jnp.array([1.0, 3.0]), 2.0 + 1.0j))
      0.5j
    """
    lam = check_array(eigenvalues, "eigenvalues", ndim=None)
    if lam.ndim < 1:
        raise ValueError("eigenvalues must have at least one axis, got a scalar.")
    traced_finite(lam, "eigenvalues")
    if is_concrete(z):
        check_upper_half_plane(z, "z")
    zz = jnp.asarray(z)
    if not jnp.issubdtype(zz.dtype, jnp.complexfloating):
        zz = zz.astype(jnp.result_type(lam.dtype, jnp.complex64))
    traced_finite(zz, "z")
    traced_range(jnp.imag(zz), "Im z", 0.0, low_open=True)
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
      eigenvalues: ``(..., n)`` real, finite eigenvalues (``n >= 1``).
      limit_stieltjes: finite complex values of the limiting transform at ``z`` (``m`` of them), e.g. from
        :func:`mp_stieltjes` or :func:`fan_wang_stieltjes`.
      z: ``(m,)`` finite complex points with ``Im z > 0``.

    Returns:
      float64 array ``(...)``.

    Example:
      >>> z = np.array([1.0 + 0.1j, 2.0 + 0.1j])
      >>> float(stieltjes_distance([1.0, 3.0], empirical_stieltjes(jnp.array([1.0, 3.0]), z), z)) < 1e-6
      True
    """
    lam = np.asarray(eigenvalues)
    if lam.dtype.kind not in "biuf":
        raise TypeError(f"eigenvalues must be real numbers, got dtype {lam.dtype}.")
    lam = lam.astype(np.float64)
    if lam.ndim < 1 or lam.shape[-1] == 0:
        raise ValueError(f"eigenvalues must have a non-empty last axis (the spectrum), got shape {lam.shape}.")
    check_finite(lam, "eigenvalues")
    z = np.atleast_1d(check_upper_half_plane(z, "z"))
    if z.ndim != 1:
        raise ValueError(f"z must be a scalar or 1-D, got shape {z.shape}.")
    m = np.asarray(limit_stieltjes)
    if m.dtype.kind not in "biufc":
        raise TypeError(f"limit_stieltjes must be complex numbers, got dtype {m.dtype}.")
    m = m.astype(np.complex128)
    if m.size != z.size:
        raise ValueError(f"limit_stieltjes must hold one value per point of z ({z.size}), got shape {m.shape}.")
    m = m.reshape(z.shape)
    if not np.all(np.isfinite(m)):
        raise ValueError("limit_stieltjes must be finite, but it has NaN/infinite entries.")
    emp = np.mean(1.0 / (lam[..., None, :] - z[:, None]), axis=-1)
    return np.max(np.abs(emp - m), axis=-1)
