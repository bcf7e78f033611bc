"""Which optimizer trained this network? A stated rule on the spectrum of ``Σ = WᵀW/h`` before and after training."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._validation import check_array, check_float

__all__ = ["SpectralDiagnosis", "spectral_diagnosis", "DIAGNOSIS_RULE"]

#: The thresholds of :func:`spectral_diagnosis` (stated in the main job's report).
DIAGNOSIS_RULE = dict(
    outlier_factor=1.1, heavy_tail_fraction=0.1, tail_drop=1.5, align_chance_multiple=2.0, min_tail=20
)


@dataclasses.dataclass(frozen=True)
class SpectralDiagnosis:
    """Result of :func:`spectral_diagnosis` (host-side floats).

    Attributes:
      top_eigenvalue: largest eigenvalue of ``Σ`` after training.
      init_max: largest eigenvalue at initialization (the finite-size bulk edge).
      n_outliers: eigenvalues after training above ``outlier_factor × init_max``.
      tail_alpha_init, tail_alpha_end: power-law tail exponents (Clauset MLE) before and after.
      top_align: ``|⟨u₁, β⟩|`` of the top eigenvector with the teacher direction.
      verdict: one of ``"heavy tails: adaptive optimizer (Adam-like)"``, ``"aligned spike: large-step (S)GD"``,
        ``"outliers without alignment"``, ``"bulk unchanged: GD or small-step SGD"``.
    """

    top_eigenvalue: float
    init_max: float
    n_outliers: int
    tail_alpha_init: float
    tail_alpha_end: float
    top_align: float
    verdict: str


def spectral_diagnosis(eig_init: Any, eig_end: Any, top_align: Any) -> SpectralDiagnosis:
    r"""Read the optimizer off the weight spectrum with a transparent rule (thresholds in :data:`DIAGNOSIS_RULE`).

    With ``d`` eigenvalues of ``Σ = WᵀW/h``, ``λ₀ = max eig_init`` (the finite-size Marchenko–Pastur edge at
    initialization), ``k = #{λ ∈ eig_end : λ > 1.1 λ₀}`` outliers, the drop ``Δα = α_init − α_end`` of the
    power-law tail exponent (:func:`jaxcompare.spectra.powerlaw_fit`, tails of at least 20 points) and
    ``a = |⟨u₁, β⟩|``:

    1. ``Δα > 1.5`` and ``k > 0.1 d`` → heavy tails: an adaptive optimizer (Adam-like) spreads the whole spectrum;
    2. else ``k ≥ 1`` and ``a > 2/√d`` (twice the chance level ``≈ 1/√d`` of a random unit vector) → an aligned
       spike: a large (S)GD step plants a BBP outlier along the teacher direction;
    3. else ``k ≥ 1`` → outliers without alignment;
    4. else the bulk is unchanged: full-batch GD or small-step SGD (bulk invariance).

    Args:
      eig_init: ``(d,)`` eigenvalues of ``Σ`` at initialization (any order, non-negative).
      eig_end: ``(d,)`` eigenvalues after training.
      top_align: ``|⟨u₁, β⟩|`` in ``[0, 1]`` (e.g. ``History.align[-1].max(-1)[0]``).

    Returns:
      :class:`SpectralDiagnosis`.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> w = rng.normal(size=(300, 100)); s0 = np.linalg.eigvalsh(w.T @ w / 300)
      >>> spectral_diagnosis(s0, s0, 0.05).verdict
      'bulk unchanged: GD or small-step SGD'
      >>> spectral_diagnosis(s0, np.r_[s0[:-1], 8.0], 0.9).verdict
      'aligned spike: large-step (S)GD'

    References:
      Wang, Wu, Fan (2023), Nonlinear spiked covariance matrices and signal propagation in deep neural networks
      (bulk invariance, spikes after a large step). Ba et al. (2022), High-dimensional asymptotics of feature
      learning: how one gradient step improves the representation (one large step, BBP).
    """
    from .. import spectra

    e0 = np.asarray(check_array(eig_init, "eig_init", ndim=1))
    e1 = np.asarray(check_array(eig_end, "eig_end", ndim=1))
    if e0.shape != e1.shape:
        raise ValueError(f"eig_init and eig_end must have the same shape (d,), got {e0.shape} and {e1.shape}.")
    for name, e in (("eig_init", e0), ("eig_end", e1)):
        if np.any(e < -1e-6 * max(1.0, float(np.abs(e).max()))):
            raise ValueError(f"{name} must be non-negative eigenvalues of WᵀW/h; its minimum is {float(e.min()):g}.")
    align = float(check_float(top_align, "top_align", low=0.0, high=1.0 + 1e-6))
    r = DIAGNOSIS_RULE
    d = e0.shape[0]
    edge = float(e0.max())
    outliers = int(np.sum(e1 > r["outlier_factor"] * edge))
    a0 = float(spectra.powerlaw_fit(e0[e0 > 0], min_tail=r["min_tail"]).alpha)
    a1 = float(spectra.powerlaw_fit(e1[e1 > 0], min_tail=r["min_tail"]).alpha)
    if a0 - a1 > r["tail_drop"] and outliers > r["heavy_tail_fraction"] * d:
        verdict = "heavy tails: adaptive optimizer (Adam-like)"
    elif outliers >= 1 and align > r["align_chance_multiple"] / np.sqrt(d):
        verdict = "aligned spike: large-step (S)GD"
    elif outliers >= 1:
        verdict = "outliers without alignment"
    else:
        verdict = "bulk unchanged: GD or small-step SGD"
    return SpectralDiagnosis(
        top_eigenvalue=float(e1.max()),
        init_max=edge,
        n_outliers=outliers,
        tail_alpha_init=a0,
        tail_alpha_end=a1,
        top_align=align,
        verdict=verdict,
    )
