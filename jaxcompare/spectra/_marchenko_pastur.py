"""Marchenko–Pastur law: support, density, atom and Stieltjes transform (host float64)."""

from __future__ import annotations

import numpy as np

from .._validation import check_complex_points, check_float, check_real_points

__all__ = ["mp_support", "mp_density", "mp_atom", "mp_stieltjes"]


def _ratio(ratio) -> float:
    return float(check_float(ratio, "ratio", low=0.0, low_open=True))


def mp_support(ratio: float) -> tuple[float, float]:
    r"""Edges ``((1 - √c)², (1 + √c)²)`` of the Marchenko–Pastur law with ratio ``c``.

    For ``Σ = WᵀW/h`` with ``W`` of shape ``(h, d)`` iid N(0, 1), ``c = d/h``.

    Example:
      >>> mp_support(0.25)
      (0.25, 2.25)
    """
    c = _ratio(ratio)
    return float((1 - np.sqrt(c)) ** 2), float((1 + np.sqrt(c)) ** 2)


def mp_atom(ratio: float) -> float:
    """Mass ``max(0, 1 - 1/c)`` of the atom at 0 (``1 - h/d`` for ``Σ = WᵀW/h`` when ``d > h``)."""
    c = _ratio(ratio)
    return max(0.0, 1.0 - 1.0 / c)


def mp_density(x, ratio: float) -> np.ndarray:
    r"""Absolutely continuous part of the Marchenko–Pastur density,

    .. math:: p(x) = \frac{\sqrt{(λ_+ - x)(x - λ_-)}}{2π c x}, \quad x ∈ [λ_-, λ_+],

    zero outside (the atom of :func:`mp_atom` is not included). ``∫ p = min(1, 1/c)``.

    Args:
      x: real, finite points, any shape (NaN, inf or complex points raise ``ValueError``/``TypeError``).
      ratio: ``c > 0``.

    Returns:
      float64 array shaped like ``x``.

    Example:
      >>> float(mp_density(1.0, 0.25)) > 0
      True
    """
    c = _ratio(ratio)
    lo, hi = mp_support(c)
    x = check_real_points(x, "x")
    inside = (x > lo) & (x < hi)
    xs = np.where(inside, x, 1.0)
    return np.where(inside, np.sqrt(np.maximum((hi - xs) * (xs - lo), 0.0)) / (2 * np.pi * c * xs), 0.0)


def mp_stieltjes(z, ratio: float) -> np.ndarray:
    r"""Stieltjes transform ``m(z) = ∫ dμ(x)/(x − z)`` of the Marchenko–Pastur law (atom included),

    .. math:: m(z; c) = \frac{1 - c - z + \sqrt{z - λ_+}\,\sqrt{z - λ_-}}{2 c z}

    with principal square roots (valid off ``[λ_-, λ_+]``, in particular on the upper half-plane).

    Args:
      z: finite complex points, any shape: ``Im z > 0``, or real outside ``[λ_-, λ_+]`` and ``z != 0``. Real points
        on the support (where the transform has two boundary values), ``Im z < 0`` and NaN/inf raise ``ValueError``.
      ratio: ``c > 0``.

    Returns:
      complex128 array shaped like ``z``.

    Example:
      >>> m = mp_stieltjes(1.0 + 0.1j, 0.5)
      >>> bool(m.imag > 0)
      True
    """
    c = _ratio(ratio)
    lo, hi = mp_support(c)
    z = _check_z(z, lo, hi)
    return _mp_stieltjes(z, c, lo, hi)


def _mp_stieltjes(z: np.ndarray, c: float, lo: float, hi: float) -> np.ndarray:
    """The formula, unchecked (internal callers pass points off the support). Its numerator ``a = 1 − c − z + s``
    cancels where ``s`` nearly equals ``z + c − 1`` (small ``c``: 4% off at ``c = 1e-14``); since
    ``a · (1 − c − z − s) = 4cz``, there ``m = 2 / (1 − c − z − s)``, whose denominator does not cancel."""
    s = np.sqrt(z - hi) * np.sqrt(z - lo)
    a, b = 1 - c - z + s, 1 - c - z - s
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(a) >= np.abs(b), a / (2 * c * z), 2 / b)


def _check_z(z, lo: float, hi: float) -> np.ndarray:
    a = check_complex_points(z, "z")
    if np.any(a.imag < 0):
        raise ValueError(
            f"z must lie in the upper half-plane (Im z > 0) or on the real axis off the support; got "
            f"Im z = {float(a.imag.min()):g}."
        )
    real = a.imag == 0
    on = real & (((a.real >= lo) & (a.real <= hi)) | (a.real == 0))
    if np.any(on):
        x = float(a.real[on].ravel()[0])
        raise ValueError(
            f"z = {x:g} is real and on the support [{lo:g}, {hi:g}] (or 0) of the Marchenko-Pastur law, "
            f"where the Stieltjes transform has two boundary values; use Im z > 0 (e.g. x + 1e-3j)."
        )
    return a
