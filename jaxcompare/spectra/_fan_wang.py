"""Fan–Wang limiting spectra of the conjugate kernel and the NTK of a two-layer network at initialization."""

from __future__ import annotations

import warnings

import numpy as np

from .._results import SolverWarning
from .._validation import check_float, check_int, check_real_points, check_upper_half_plane
from ._marchenko_pastur import _mp_stieltjes, mp_support

__all__ = ["fan_wang_stieltjes", "fan_wang_density"]


def fan_wang_stieltjes(
    z,
    *,
    gamma0: float,
    gamma1: float,
    t0: float,
    t1: float,
    A0: float = 0.0,
    A1: float = 0.0,
    g_eigenvalues=None,
    damping: float = 0.5,
    max_iter: int = 4000,
    tol: float = 1e-12,
) -> np.ndarray:
    r"""Stieltjes transform of the Fan & Wang (2020) limit law of ``A₀ I + A₁ G + K_CK`` (host, complex128).

    Solved by the damped fixed point (shared/spec/lwr.md), started at ``Im z = 1`` and continued down to the
    requested imaginary parts, each level warm-started from the previous one:

    .. math::
        α = A_0 - z + t_0 s,\quad β = A_1 + t_1 s,\quad M = m_{MP}(-α/β; γ_0)/β,\quad
        T = t_1/β + (t_0 - t_1 α/β) M,\quad s ← 1/(1 + γ_1 T),

    result ``m(z) = M``. With ``γ₀ = n/d``, ``γ₁ = n/h``, ``t₀ = m₂ − b²``, ``t₁ = b²``: the CK law has
    ``A₀ = A₁ = 0``; the NTK law ``A₀ = ν²(a − b²)``, ``A₁ = ν² b²``. Setting ``t₀ = t₁ = 0`` gives the law of
    ``K_W ≈ A₀ I + A₁ G`` (a shifted, scaled MP law).

    Args:
      z: finite complex points with ``Im z > 0``, any shape (others raise ``ValueError``).
      gamma0, gamma1: aspect ratios ``n/d`` and ``n/h``.
      t0, t1, A0, A1: the constants above (``t1 + A1 > 0``).
      g_eigenvalues: optional eigenvalues of ``G = XᵀX/d`` for real data: the empirical Stieltjes transform replaces
        ``m_MP(·; γ₀)``.
      damping: weight of the new iterate (0.5).
      max_iter, tol: per continuation level.

    Returns:
      complex128 array shaped like ``z`` (atoms included: ``-z·m(z) →`` their mass as ``z → atom``).

    Example:
      >>> m = fan_wang_stieltjes(1.0 + 0.1j, gamma0=2.0, gamma1=4/3, t0=0.027, t1=0.367)
      >>> bool(m.imag > 0)
      True
    """
    g0 = float(check_float(gamma0, "gamma0", low=0.0, low_open=True))
    g1 = float(check_float(gamma1, "gamma1", low=0.0, low_open=True))
    t0 = float(check_float(t0, "t0", low=0.0))
    t1 = float(check_float(t1, "t1", low=0.0))
    A0 = float(check_float(A0, "A0", low=0.0))
    A1 = float(check_float(A1, "A1", low=0.0))
    damping = float(check_float(damping, "damping", low=0.0, high=1.0, low_open=True))
    max_iter = check_int(max_iter, "max_iter", min=1)
    tol = float(check_float(tol, "tol", low=0.0))
    if t1 + A1 <= 0:
        raise ValueError("t1 + A1 must be positive (the activation needs b = E phi'(xi) != 0).")
    zt = check_upper_half_plane(z, "z")
    if g_eigenvalues is None:
        lo, hi = mp_support(g0)
        m_g = lambda w: _mp_stieltjes(w, g0, lo, hi)  # noqa: E731
    else:
        lam = check_real_points(g_eigenvalues, "g_eigenvalues").ravel()  # real and finite
        if lam.size == 0:
            raise ValueError("g_eigenvalues must not be empty: pass the eigenvalues of G = XᵀX/d.")
        if lam.min() < -1e-5 * max(lam.max(), 0.0):  # (rounding leaves zero eigenvalues slightly negative)
            raise ValueError(
                f"g_eigenvalues must be eigenvalues of G = XᵀX/d (>= 0), got a minimum of {float(lam.min()):g}."
            )
        m_g = lambda w: np.mean(1.0 / (lam[None, :] - w.reshape(-1, 1)), axis=1).reshape(w.shape)  # noqa: E731

    flat = zt.ravel()
    eta_target = flat.imag
    levels = [1.0]
    while levels[-1] > eta_target.min() * 1.0001:
        levels.append(levels[-1] / 3.0)
    s = np.ones_like(flat)
    M = np.zeros_like(flat)
    delta = 0.0
    for eta in levels + [None]:
        zz = flat if eta is None else flat.real + 1j * np.maximum(eta, eta_target)
        for _ in range(max_iter):
            alpha = A0 - zz + t0 * s
            beta = A1 + t1 * s
            M = m_g(-alpha / beta) / beta
            T = t1 / beta + (t0 - t1 * alpha / beta) * M
            s_new = 1.0 / (1.0 + g1 * T)
            delta = np.max(np.abs(s_new - s)) if s.size else 0.0
            s = (1 - damping) * s + damping * s_new
            if delta < tol:
                break
    if not delta < tol:  # the target level's iteration stopped at max_iter
        warnings.warn(
            f"fan_wang_stieltjes did not converge at the target points: max |Δs| = {delta:.3g} > tol = {tol:.3g} "
            f"after max_iter = {max_iter} iterations (damping {damping}); raise max_iter or damping, or loosen tol.",
            SolverWarning,
            stacklevel=2,
        )
    alpha = A0 - flat + t0 * s
    beta = A1 + t1 * s
    M = m_g(-alpha / beta) / beta
    return M.reshape(zt.shape)


def fan_wang_density(x, *, eps: float = 1e-3, **kwargs) -> np.ndarray:
    """Density ``Im m(x + iε)/π`` of the Fan–Wang law on a real grid (smoothed at scale ``eps``; atoms excluded
    in the sense that they appear as spikes of height ``mass/(π ε)`` — plot them separately).

    Args:
      x: real, finite grid, any shape.
      eps: imaginary part.
      **kwargs: the parameters of :func:`fan_wang_stieltjes`.

    Returns:
      float64 array shaped like ``x``.
    """
    eps = float(check_float(eps, "eps", low=0.0, low_open=True))
    x = check_real_points(x, "x")
    return fan_wang_stieltjes(x + 1j * eps, **kwargs).imag / np.pi
