"""Limiting laws of the three matrices at initialization for a given :class:`LWRConfig`, and the one-step spike."""

from __future__ import annotations

import dataclasses

import numpy as np

from .._validation import check_choice, check_float, check_real_points
from ..spectra import (
    bbp_outlier,
    fan_wang_stieltjes,
    gaussian_constants,
    mp_atom,
    mp_density,
    mp_stieltjes,
    mp_support,
)
from ._config import LWRConfig
from ._model import _apply, _check_cfg, _check_model_data

__all__ = [
    "MATRICES",
    "limit_stieltjes",
    "limit_density",
    "limit_atoms",
    "ntk_w_edge",
    "stable_lr",
    "spike_theta",
    "SpikePrediction",
]

MATRICES = ("weights", "ck", "ntk", "ntk_w")


def _fw_params(cfg: LWRConfig, matrix: str, nu2: float) -> dict:
    c = gaussian_constants(cfg.activation)
    base = dict(gamma0=cfg.n / cfg.d, gamma1=cfg.n / cfg.h)
    if matrix == "ck":
        return dict(base, t0=c.m2 - c.b**2, t1=c.b**2)
    if matrix == "ntk":
        return dict(base, t0=c.m2 - c.b**2, t1=c.b**2, A0=nu2 * (c.a - c.b**2), A1=nu2 * c.b**2)
    return dict(base, t0=0.0, t1=0.0, A0=nu2 * (c.a - c.b**2), A1=nu2 * c.b**2)


def _check(cfg, matrix, nu2):
    _check_cfg(cfg)
    check_choice(matrix, "matrix", MATRICES)
    return float(check_float(nu2, "nu2", low=0.0, low_open=True))


def limit_stieltjes(cfg: LWRConfig, z, matrix: str = "weights", *, nu2: float = 1.0) -> np.ndarray:
    r"""Stieltjes transform of the limiting spectrum at initialization (host complex128).

    ``"weights"``: Marchenko–Pastur with ratio ``d/h``; ``"ck"``, ``"ntk"`` (``K_W + K_CK``) and ``"ntk_w"``
    (``K_W``): the Fan–Wang fixed point with ``γ₀ = n/d``, ``γ₁ = n/h`` and the Gaussian constants of
    ``cfg.activation`` (see :func:`jaxcompare.spectra.fan_wang_stieltjes`).

    Args:
      cfg: :class:`LWRConfig`.
      z: complex points (``Im z > 0``).
      matrix: one of ``"weights"``, ``"ck"``, ``"ntk"``, ``"ntk_w"``.
      nu2: ``ν² = ‖v‖²/h`` (1 for ±1 entries).

    Example:
      >>> m = limit_stieltjes(LWRConfig(n=200, d=100, h=150), 1.0 + 0.1j, "ck")
      >>> bool(m.imag > 0)
      True
    """
    nu2 = _check(cfg, matrix, nu2)
    if matrix == "weights":
        return mp_stieltjes(z, cfg.d / cfg.h)
    return fan_wang_stieltjes(z, **_fw_params(cfg, matrix, nu2))


def limit_density(cfg: LWRConfig, x, matrix: str = "weights", *, eps: float = 2e-3, nu2: float = 1.0) -> np.ndarray:
    """Limiting density on a real grid (absolutely continuous part; atoms from :func:`limit_atoms`).

    Exact Marchenko–Pastur density for ``"weights"``; ``Im m(x + iε)/π`` for the kernels, minus the atoms'
    Lorentzian contribution so that the curve shows the continuous part only.
    """
    nu2 = _check(cfg, matrix, nu2)
    eps = float(check_float(eps, "eps", low=0.0, low_open=True))
    x = check_real_points(x, "x")
    if matrix == "weights":
        return mp_density(x, cfg.d / cfg.h)
    dens = fan_wang_stieltjes(x + 1j * eps, **_fw_params(cfg, matrix, nu2)).imag / np.pi
    for loc, mass in limit_atoms(cfg, matrix):
        dens = dens - mass * eps / (np.pi * ((x - loc) ** 2 + eps**2))
    return np.maximum(dens, 0.0)


def limit_atoms(cfg: LWRConfig, matrix: str = "weights") -> tuple[tuple[float, float], ...]:
    """Atoms ``((location, mass), ...)`` of the limiting law: ``Σ``: ``1 − h/d`` at 0 when ``d > h``;
    CK: ``1 − h/n`` at 0 when ``h < n``; the NTKs have none (``A₀ > 0``)."""
    _check(cfg, matrix, 1.0)
    if matrix == "weights":
        m = mp_atom(cfg.d / cfg.h)
    elif matrix == "ck":
        m = max(0.0, 1.0 - cfg.h / cfg.n)
    else:
        m = 0.0
    return ((0.0, m),) if m > 0 else ()


def ntk_w_edge(cfg: LWRConfig, *, nu2: float = 1.0) -> float:
    """Limit of ``λ_max(K_W)``: ``ν²[(a − b²) + b²(1 + √(n/d))²]`` (2.236 for the typical tanh config)."""
    _check_cfg(cfg)
    nu2 = _check(cfg, "ntk_w", nu2)
    c = gaussian_constants(cfg.activation)
    return float(nu2 * ((c.a - c.b**2) + c.b**2 * (1 + np.sqrt(cfg.n / cfg.d)) ** 2))


def _support_top(cfg: LWRConfig, matrix: str, nu2: float) -> float:
    """Right edge of the limiting law's support, from its density (it integrates to at most 1 and vanishes like a
    square root at the edge): the last point where it exceeds 1e-4, on a coarse grid (``ε = 1e-4``) widened until
    the density has ended, then on a fine grid (``ε = 1e-5``) from 5% below that point. (Relative to the peak, a
    threshold cut the long thin tail of the NTK of both layers when ``h < n``; a wide ``ε`` stretches the tail past
    the edge.) The fixed point is solved to ``1e-6``, far below what a threshold of 1e-4 can see (near the real
    axis ``1e-12`` takes more than the iteration cap)."""
    params = _fw_params(cfg, matrix, nu2)

    def last_above(x, eps):
        dens = fan_wang_stieltjes(x + 1j * eps, tol=1e-6, **params).imag / np.pi
        return x[np.nonzero(dens > 1e-4)[0][-1]]

    hi = 4.0 * ntk_w_edge(cfg, nu2=nu2) + 4.0
    for _ in range(8):
        x = np.linspace(hi / 1000, hi, 1000)
        top = last_above(x, 1e-4)
        if top < 0.9 * hi:
            break
        hi *= 2.0
    return float(last_above(np.linspace(0.95 * top, top + (x[1] - x[0]), 300), 1e-5))


def stable_lr(cfg: LWRConfig, *, nu2: float = 1.0) -> float:
    """Largest stable full-batch GD step in the limit: ``η_max = 2n/λ_max(K)`` (≈ 0.89 n typically).

    ``K = K_W`` when only ``W`` trains (the closed form of :func:`ntk_w_edge`); with ``cfg.train_v`` the NTK of
    both layers, ``K_W + K_CK``, whose edge is read from its limiting density (:func:`limit_density`): ≈ 0.43 n
    for ``n = 400, d = 200, h = 1600``, half of the ``W``-only step.
    """
    _check_cfg(cfg)
    nu2 = _check(cfg, "ntk", nu2)
    edge = _support_top(cfg, "ntk", nu2) if cfg.train_v else ntk_w_edge(cfg, nu2=nu2)
    return 2 * cfg.n / edge


@dataclasses.dataclass(frozen=True)
class SpikePrediction:
    """One-step BBP prediction for ``Σ₁ = W₁ᵀW₁/h`` (see :func:`spike_theta`).

    Attributes:
      theta: effective spike strength ``θ`` (accounts for the push's correlation with ``W₀``).
      outlier: predicted top eigenvalue of ``Σ₁`` (the MP edge below the threshold ``θ ≤ c^{1/4}``).
      align_push: predicted ``|⟨u₁, â⟩|`` with ``â`` the direction of ``a = W₁ᵀv/‖v‖``.
      align_beta: predicted ``|⟨u₁, β_j⟩|``, shape ``(k,)``.
      theta_naive, outlier_naive: the textbook reading ``W₁/√h = W₀/√h + θ u wᵀ`` with ``w`` independent of ``W₀``
        (``θ = η b ‖v‖ ‖Xᵀr₀‖/(n h √d)``); it over-predicts the outlier because the residual contains ``−f₀``,
        whose linear part points along ``−W₀ᵀv``.
      mp_edge: ``(1 + √c)²``.
    """

    theta: float
    outlier: float
    align_push: float
    align_beta: np.ndarray
    theta_naive: float
    outlier_naive: float
    mp_edge: float


def spike_theta(params, data, cfg: LWRConfig, lr: float) -> SpikePrediction:
    r"""BBP prediction for ``Σ`` after one full-batch GD step of size ``η`` from ``params`` (W trains).

    With ``φ′ ≈ b`` the step is rank one: ``W₁ ≈ W₀ + (η b/(n√(hd)))·v (Xᵀr₀)ᵀ`` (``r₀ = y − f₀``). Write
    ``u = v/‖v‖`` and ``W₁ = (I − uuᵀ)W₀ + u aᵀ`` with

    .. math:: a = W_1^T u = W_0^T u + \frac{η b ‖v‖}{n\sqrt{hd}} X^T r_0 .

    For Gaussian ``W₀`` and ``u`` independent of it, ``(I − uuᵀ)W₀`` is independent of ``W₀ᵀu``, so
    ``Σ₁ = B + ρ ââᵀ`` with ``B`` Marchenko–Pastur (ratio ``c = d/h``) and ``ρ = ‖a‖²/h``: the outlier solves
    ``∫ dμ_MP(x)/(z − x) = 1/ρ``, which is the BBP location ``(1 + θ²)(c + θ²)/θ²`` with ``θ² = ρ − c``, and
    ``|⟨u₁, â⟩|² = 1 − c/θ⁴`` (both for ``θ > c^{1/4}``); then ``|⟨u₁, β⟩| ≈ |⟨u₁, â⟩|·|⟨â, β⟩|``.
    When ``Xᵀr₀`` is independent of ``W₀`` this is exactly the rectangular BBP rule of the spec. It is not here: the
    residual contains ``−f₀``, whose linear part ``b vᵀW₀x/√(hd)`` makes ``a`` partly cancel ``W₀ᵀu``; ignoring that
    (``theta_naive``, ``outlier_naive``) over-predicts the outlier by 10–35 % at ``n = 2000``.

    Args:
      params: :class:`LWRParams` at initialization.
      data: :class:`LWRData`.
      cfg: :class:`LWRConfig`.
      lr: step size ``η`` (in the units of ``‖y − f‖²/(2n)``).

    Returns:
      :class:`SpikePrediction` (float64 numbers computed on the host).

    Example:
      >>> from jaxcompare import lwr
      >>> cfg = lwr.LWRConfig(n=400, d=200, h=300)
      >>> p = lwr.init_params(jax.random.key(1), cfg)
      >>> pred = lwr.spike_theta(p, lwr.sample_data(jax.random.key(0), cfg), cfg, lr=4 * cfg.n)
      >>> bool(pred.outlier > pred.mp_edge), bool(pred.outlier < pred.outlier_naive)
      (True, True)

    References:
      Benaych-Georges & Nadakuditi, "The singular values and vectors of low rank perturbations of large rectangular
      random matrices", J. Multivariate Anal. 2012 (outlier location and eigenvector overlap); Ba et al.,
      "High-dimensional asymptotics of feature learning: how one gradient step improves the representation",
      NeurIPS 2022 (the one-step rank-one push); Wang et al., "Spectral evolution and invariance in linear-width
      neural networks", NeurIPS 2023.
    """
    lr = float(check_float(lr, "lr", low=0.0, low_open=True))
    return _spike_prediction(_spike_parts(params, data, cfg), lr)


def _spike_parts(params, data, cfg: LWRConfig) -> dict:
    """The step-size-independent pieces of :func:`spike_theta` (float64): ``W₀ᵀu``, the push per unit ``η`` along
    ``u`` (``b‖v‖/(n√(hd)) Xᵀr₀``), the planted directions and the ratio ``c = d/h``."""
    _check_cfg(cfg)
    params, X, y, _, _, B = _check_model_data(params, data, cfg)
    r0 = np.asarray(y, np.float64) - np.asarray(
        _apply(params.W, params.v, X.astype(params.W.dtype), cfg.activation), np.float64
    )
    v = np.asarray(params.v, np.float64)
    nv = np.linalg.norm(v)
    b = gaussian_constants(cfg.activation).b
    push = b * nv / (cfg.n * np.sqrt(cfg.h * cfg.d)) * (np.asarray(X, np.float64).T @ r0)
    return dict(
        base=np.asarray(params.W, np.float64).T @ (v / nv),
        push=push,
        B=np.asarray(B, np.float64),
        c=cfg.d / cfg.h,
        h=cfg.h,
    )


def _spike_prediction(parts: dict, lr: float) -> SpikePrediction:
    c, h = parts["c"], parts["h"]
    a = parts["base"] + lr * parts["push"]  # a = W₁ᵀu
    t2 = max(float(a @ a) / h - c, 0.0)
    theta = np.sqrt(t2)
    align_push = float(np.sqrt(1 - c / t2**2)) if theta > c**0.25 else 0.0
    theta_naive = lr * np.linalg.norm(parts["push"]) / np.sqrt(h)
    return SpikePrediction(
        theta=float(theta),
        outlier=float(bbp_outlier(theta, c)),
        align_push=align_push,
        align_beta=align_push * np.abs(parts["B"] @ a) / np.linalg.norm(a),
        theta_naive=float(theta_naive),
        outlier_naive=float(bbp_outlier(theta_naive, c)),
        mp_edge=mp_support(c)[1],
    )
