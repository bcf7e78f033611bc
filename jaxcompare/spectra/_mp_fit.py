"""Marchenko–Pastur bulk fit of an empirical spectrum and the finite-size (Tracy–Widom) outlier threshold."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.integrate
import scipy.optimize

from .._validation import check_array, check_finite, check_float, check_int, host_float64

__all__ = ["MPBulkFit", "mp_bulk_fit", "mp_median", "TW1_Q99"]

TW1_Q99 = 2.0234  # 99 % quantile of the real (β = 1) Tracy–Widom law (Bejan 2005, table 2)


@dataclasses.dataclass(frozen=True)
class MPBulkFit:
    """Result of :func:`mp_bulk_fit` (Python floats / int).

    Attributes:
      sigma2: estimated entry variance ``σ̂²`` (scale of the bulk).
      ratio: ``c = M/N ≤ 1``.
      edge: asymptotic upper bulk edge ``λ₊ = σ̂² (1 + √c)²``.
      threshold: finite-size outlier threshold (Tracy–Widom margin above the edge).
      n_outliers: number of eigenvalues ``> threshold``.
    """

    sigma2: float
    ratio: float
    edge: float
    threshold: float
    n_outliers: int


def _theta_integrand(theta: float, c: float) -> float:
    # x = λ₋ + (λ₊ − λ₋)(1 − cos θ)/2 turns the MP density's square-root edges into a smooth integrand on [0, π]
    lo, hi = (1 - np.sqrt(c)) ** 2, (1 + np.sqrt(c)) ** 2
    half = (hi - lo) / 2
    x = lo + half * (1 - np.cos(theta))
    return half**2 * np.sin(theta) ** 2 / (2 * np.pi * c * max(x, 1e-300))


def mp_median(ratio: float) -> float:
    r"""Median of the Marchenko–Pastur law with ``σ² = 1`` and ratio ``c ∈ (0, 1]`` (no atom).

    Solves ``F_c(μ) = 1/2`` with ``F_c`` integrated by quadrature in the angle variable
    ``x = λ₋ + (λ₊ − λ₋)(1 − cos θ)/2``. Used by Gavish & Donoho (2014) to estimate the noise level robustly.

    Example:
      >>> round(mp_median(1.0), 4)
      0.6528
    """
    # validated before the cache: an array scalar is unhashable, and the cache sees True == 1
    return _mp_median(float(check_float(ratio, "ratio", low=0.0, high=1.0, low_open=True)))


@functools.lru_cache(maxsize=256)
def _mp_median(c: float) -> float:
    lo, hi = (1 - np.sqrt(c)) ** 2, (1 + np.sqrt(c)) ** 2

    def cdf_minus_half(t: float) -> float:
        return scipy.integrate.quad(_theta_integrand, 0.0, t, args=(c,), epsabs=1e-13, epsrel=1e-12)[0] - 0.5

    t = scipy.optimize.brentq(cdf_minus_half, 0.0, np.pi, xtol=1e-14)
    return float(lo + (hi - lo) * (1 - np.cos(t)) / 2)


def mp_bulk_fit(eigenvalues, n: int, m: int, *, n_matrices: int = 1, tw_margin: float = TW1_Q99) -> MPBulkFit:
    r"""Fit the Marchenko–Pastur bulk to the eigenvalues of ``WᵀW/N`` and count the outliers above its edge.

    ``W`` is ``N × M`` (``N ≥ M``; pass ``n_matrices`` equally shaped matrices' pooled eigenvalues). For iid entries
    of variance ``σ²`` the spectrum follows MP with ratio ``c = M/N`` scaled by ``σ²``, whose median is
    ``σ² μ_c`` (:func:`mp_median`); the estimate ``σ̂² = median(λ)/μ_c`` (Gavish & Donoho 2014) ignores a few
    outliers (``k`` spikes move the median by ``O(k/M)`` quantiles) unlike the mean ``‖W‖_F²/(NM)``.

    The asymptotic edge is ``λ₊ = σ̂²(1 + √c)²``. At finite size the largest noise eigenvalue fluctuates above it on
    the Tracy–Widom scale ``N^{-2/3}``: by Johnstone (2001), ``(N λ_max/σ² − μ_{NM})/s_{NM} → TW₁`` with
    ``μ_{NM} = (√(N−1) + √M)²`` and ``s_{NM} = (√(N−1) + √M)(1/√(N−1) + 1/√M)^{1/3}``
    (``s/N ≈ (1 + √c)^{4/3} c^{-1/6} N^{-2/3}``). An eigenvalue is an outlier when it exceeds
    ``threshold = σ̂² (μ_{NM} + t · s_{NM})/N`` with ``t = tw_margin``; the default ``t = 2.0234`` is the 99 %
    quantile of TW₁, so a pure-noise matrix reports an outlier with probability ≈ 1 % (per matrix).

    Args:
      eigenvalues: ``(K,)`` eigenvalues of ``WᵀW/N`` (``K = n_matrices · M``; zeros allowed).
      n: larger side ``N``.
      m: smaller side ``M`` (``2 ≤ M ≤ N``).
      n_matrices: number of matrices pooled in ``eigenvalues``.
      tw_margin: margin in Tracy–Widom scale units (≥ 0).

    Returns:
      :class:`MPBulkFit`.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> W = rng.standard_normal((400, 100)) * 0.5
      >>> fit = mp_bulk_fit(np.linalg.svd(W, compute_uv=False) ** 2 / 400, 400, 100)
      >>> round(fit.sigma2, 2), fit.n_outliers
      (0.25, 0)

    References:
      M. Gavish, D. L. Donoho, *The optimal hard threshold for singular values is 4/√3*, IEEE Trans. Inf. Theory
      60 (2014). I. M. Johnstone, *On the distribution of the largest eigenvalue in principal components analysis*,
      Ann. Statist. 29 (2001). A. Bejan, *Largest eigenvalues and sample covariance matrices* (2005).
    """
    n = check_int(n, "n", min=2)
    m = check_int(m, "m", min=2, max=n)
    n_matrices = check_int(n_matrices, "n_matrices", min=1)
    tw_margin = float(check_float(tw_margin, "tw_margin", low=0.0))
    with np.errstate(over="ignore", under="ignore"):  # without x64, JAX holds float64 values in float32
        checked = check_array(eigenvalues, "eigenvalues", ndim=1, finite=False)
    lam = host_float64(eigenvalues, checked)  # NumPy float64 at its own precision (1e39 is finite, 1e-42 not 0)
    check_finite(lam, "eigenvalues")
    if lam.size != n_matrices * m:
        raise ValueError(f"eigenvalues must have n_matrices * m = {n_matrices * m} entries, got {lam.size}.")
    c = m / n
    med = float(np.median(lam))
    if not med > 0:
        raise ValueError("eigenvalues have a zero median: the bulk is degenerate (at least half the spectrum is 0).")
    sigma2 = med / mp_median(c)
    a = np.sqrt(n - 1.0) + np.sqrt(m)
    mu = a**2
    s = a * (1 / np.sqrt(n - 1.0) + 1 / np.sqrt(m)) ** (1 / 3)
    threshold = sigma2 * (mu + tw_margin * s) / n
    return MPBulkFit(
        sigma2=float(sigma2),
        ratio=float(c),
        edge=float(sigma2 * (1 + np.sqrt(c)) ** 2),
        threshold=float(threshold),
        n_outliers=int(np.sum(lam > threshold)),
    )
