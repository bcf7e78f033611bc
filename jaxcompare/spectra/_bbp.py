"""BBP phase transition for a rank-one spike in a rectangular Gaussian matrix."""

from __future__ import annotations

import numpy as np

from .._validation import check_float

__all__ = ["bbp_threshold", "bbp_outlier", "bbp_alignment"]


def _prep(theta, ratio):
    c = float(check_float(ratio, "ratio", low=0.0, low_open=True))
    th = np.asarray(theta)
    if th.dtype.kind == "b":
        raise TypeError(f"theta must hold real numbers, got booleans ({theta!r}).")
    if th.dtype.kind not in "iuf" and th.dtype.name != "bfloat16":
        raise TypeError(f"theta must hold real numbers, got dtype {th.dtype}.")
    th = th.astype(np.float64)
    if np.any(~np.isfinite(th)) or np.any(th < 0):
        raise ValueError("theta must be finite and non-negative.")
    return c, th, np.maximum(th * th, 1e-300)


def bbp_threshold(ratio: float) -> float:
    """Critical spike strength ``θ_c = c^{1/4}`` for ``W/√h = Z/√h + θ u wᵀ``, ``c = d/h``."""
    c = float(check_float(ratio, "ratio", low=0.0, low_open=True))
    return c**0.25


def bbp_outlier(theta, ratio: float) -> np.ndarray:
    r"""Limit of the top eigenvalue of ``Σ = WᵀW/h`` for ``W/√h = Z/√h + θ u wᵀ`` (``|u| = |w| = 1``):

    .. math:: λ_1 → \frac{(1 + θ^2)(c + θ^2)}{θ^2} \ \text{if}\ θ > c^{1/4},\quad (1 + \sqrt c)^2 \ \text{otherwise}.

    Args:
      theta: spike strengths ``θ ≥ 0``, any shape.
      ratio: ``c = d/h``.

    Returns:
      float64 array shaped like ``theta``.

    Example:
      >>> float(bbp_outlier(2.0, 1.0))
      6.25
    """
    c, th, t2 = _prep(theta, ratio)
    out = (1 + t2) * (1 + c / t2)  # = (1 + θ²)(c + θ²)/θ², without θ⁴ (inf, then NaN, beyond θ ≈ 1e77)
    return np.where(th > c**0.25, out, (1 + np.sqrt(c)) ** 2)


def bbp_alignment(theta, ratio: float) -> np.ndarray:
    r"""Limit of ``|⟨u₁, w⟩|²`` (top eigenvector of ``Σ`` vs the planted right direction):

    .. math:: 1 - \frac{c(1 + θ^2)}{θ^2(θ^2 + c)} \ \text{if}\ θ > c^{1/4},\quad 0 \ \text{otherwise}.

    Example:
      >>> round(float(bbp_alignment(2.0, 1.0)), 4)
      0.75
    """
    c, th, t2 = _prep(theta, ratio)
    out = 1 - c / (t2 + c) * (1 + 1 / t2)  # = 1 − c(1 + θ²)/(θ²(θ² + c)), without θ⁴
    return np.where(th > c**0.25, np.clip(out, 0.0, 1.0), 0.0)
