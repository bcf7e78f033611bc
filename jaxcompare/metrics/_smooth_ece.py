r"""Smooth ECE (Błasiok, Gopalan, Hu, Nakkiran et al., ICLR 2024) with relplot's discretization.

Definition. Predictions ``f_i ∈ [0, 1]`` with outcomes ``y_i ∈ {0, 1}`` give residuals ``r_i = f_i - y_i``. With a
Gaussian kernel ``K_σ`` reflected at 0 and 1, the smoothed residual and density are

``r̂_σ(t) = Σ_i K_σ(t, f_i) r_i / Σ_i K_σ(t, f_i)``,  ``δ̂_σ(t) = Σ_i K_σ(t, f_i)``,

and ``smECE_σ = ∫ |r̂_σ(t)| δ̂_σ(t) dt / ∫ δ̂_σ(t) dt``. ``smECE_σ`` decreases in ``σ``; the smooth ECE is its value
at the fixed point ``σ* = smECE_σ*``.

Discretization (the one of relplot 1.0.3, ``relplot.smECE(f, y, eps=0.001)``, read from its documented source so that
values agree to rounding):

* at a bandwidth ``σ``, the points are linearly binned ("smooth rounding") onto ``E = max(2000, round(20/σ)) // 2 + 1``
  grid nodes ``k/(E-1)``; the grid values are reflected at both ends (without repeating the end nodes) and
  convolved with the Gaussian density sampled on the grid and truncated at distance ``1/2``; the result is
  interpolated linearly onto ``T = max(round(10/σ), 200)`` evaluation points ``t_j = j/(T-1)``; with
  ``Y_j`` the smoothed residual sums and ``D_j`` the smoothed counts, ``smECE_σ = Σ_j |Y_j| / Σ_j (D_j + 10⁻⁴)``;
* ``σ*`` is found by ten bisection steps on ``[0, 1]`` for the predicate ``σ < eps or σ < smECE_σ`` (true below
  the fixed point); the result is ``smECE`` at the upper end of the final bracket (a multiple of ``2⁻¹⁰``).

Speed. The convolution runs by FFT on a fixed-size buffer, so the code is jittable and vmappable (the bandwidth is a
traced value, shapes are static). Up to ``2¹⁷`` points every bisection step bins the points exactly as relplot. Above,
the points are first summed once into ``G = 128000`` equal cells (per cell: count, the sum of the in-cell offsets,
and the same two weighted by ``r``), and each step bins cells instead of points: every point still gets its exact
linear-binning weights, except that a point in a cell that straddles a node ``k/(E-1)`` is treated as lying in the
node interval of the cell's left edge, i.e. a weight of at most ``(E-1)/G`` moves by two grid steps. ``G`` is a
multiple of 1000, so for ``σ ≥ 0.01`` (``E = 1001``) no cell straddles and the result equals the per-point one; below,
the effect on the smoothed curves is of order ``((E-1)/G)^2``, measured at under ``10⁻⁷`` absolute (tests compare both
paths). Cost: one pass over the points plus ``11 × O(G)``, against relplot's ``12 ×`` (``np.add.at`` over the points
plus a direct convolution). Eager float64 calls sum the cells on the host (``np.bincount``; XLA's CPU scatter-add is
about 3x slower in float64 than in float32), other calls with a scatter-add.

References:
  J. Błasiok, P. Nakkiran. "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing." ICLR 2024
  (arXiv:2309.12236). Package ``relplot`` (github.com/apple/ml-calibration).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._checked import traced_finite, traced_labels, traced_range
from .._validation import (
    at_least_float32,
    check_array,
    check_flag,
    check_float,
    check_labels,
    check_same_length,
    is_concrete,
)
from ._calibration import _check_probs

__all__ = ["smooth_ece", "smooth_ece_sigma"]

N_STEPS = 10  # bisection refinements (relplot's search_param(refine=10))
SIGMA_MIN = 2.0**-N_STEPS  # smallest bandwidth the bisection can evaluate
E_MAX = max(2000, round(20 / SIGMA_MIN)) // 2 + 1  # 10241 grid nodes at SIGMA_MIN
T_MAX = max(round(10 / SIGMA_MIN), 200)  # 10240 evaluation points at SIGMA_MIN
FFT_LEN = 1 << (3 * E_MAX - 2 - 1).bit_length()  # 32768 >= 3 E_MAX - 2: the reflected grid fits without wrap
N_CELLS = 128_000  # cells of the pre-binning for large inputs (a multiple of 1000)
CELLS_ABOVE = 1 << 17  # inputs with more points use the cells
DENSITY_EPS = 1e-4  # relplot adds 1e-4 to the smoothed counts
E_COARSE = 2000 // 2 + 1  # the grid of every bandwidth >= 0.01 (round(20/σ) <= 2001)
FFT_COARSE = 1 << (3 * E_COARSE - 2 - 1).bit_length()  # 4096
T_COARSE = 1024  # T <= 1001 when E = 1001


# ------------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------------
def _check_binary_or_top(probs: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    """Validate ``(n,)`` binary probabilities with 0/1 labels or ``(n, C)`` probabilities with labels in ``[0, C)``;
    return confidences ``f`` and 0/1 outcomes ``y`` (top label for ``(n, C)``) in the float dtype of ``probs``."""
    p = at_least_float32(check_array(probs, "probs", ndim=(1, 2)))
    if p.ndim == 2:
        p, y = _check_probs(p, labels)
        traced_finite(p, "probs")
        traced_range(p, "probs", 0.0, 1.0)
        traced_labels(y, "labels", p.shape[1])
        return _top_label(p, y)
    if is_concrete(p):
        a = np.asarray(p)
        if a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"probs must lie in [0, 1], got values from {a.min():g} to {a.max():g}; pass "
                "probabilities of the positive class (e.g. jax.nn.sigmoid(logit)), not logits."
            )
    y = check_labels(labels, "labels", 2)
    check_same_length({"probs": p, "labels": y})
    traced_finite(p, "probs")
    traced_range(p, "probs", 0.0, 1.0)
    traced_labels(y, "labels", 2)
    return p, y.astype(p.dtype)


def _top_label(p: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.max(p, axis=1), (jnp.argmax(p, axis=1) == y).astype(p.dtype)


# ------------------------------------------------------------------------------------------------------------------
# grid sizes and the smoothing at one bandwidth (traced sigma, static buffers)
# ------------------------------------------------------------------------------------------------------------------
def _sizes(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """relplot's grid size ``E`` and number of evaluation points ``T`` at bandwidth ``sigma`` (int32 scalars)."""
    e = jnp.maximum(2000.0, jnp.round(20.0 / sigma)).astype(jnp.int32) // 2 + 1
    t = jnp.maximum(jnp.round(10.0 / sigma), 200.0).astype(jnp.int32)
    return jnp.minimum(e, E_MAX), jnp.minimum(t, T_MAX)


def _bin_points(f: jax.Array, q: jax.Array, e: jax.Array, e_buf: int) -> jax.Array:
    """Linear binning of ``(n, c)`` weights ``q`` at ``f`` onto the ``e`` nodes ``k/(e-1)``: ``(e_buf, c)``."""
    h = (e - 1).astype(f.dtype)
    k = jnp.clip(jnp.floor(f * h).astype(jnp.int32), 0, e - 2)
    frac = (f * h - k.astype(f.dtype))[:, None]
    out = jnp.zeros((e_buf, q.shape[1]), f.dtype)
    return out.at[k].add((1 - frac) * q).at[k + 1].add(frac * q)


def _cell_sums(f: jax.Array, q: jax.Array) -> jax.Array:
    """Per cell ``[c/G, (c+1)/G)``: sums of ``q`` and of ``q u`` (``u = f G - c`` the in-cell offset): ``(G, 2c)``."""
    g = jnp.asarray(N_CELLS, f.dtype)
    c = jnp.minimum(jnp.floor(f * g).astype(jnp.int32), N_CELLS - 1)
    u = (f * g - c.astype(f.dtype))[:, None]
    return jnp.zeros((N_CELLS, 2 * q.shape[1]), f.dtype).at[c].add(jnp.concatenate([q, q * u], axis=1))


def _bin_cells(cells: jax.Array, e: jax.Array, e_buf: int) -> jax.Array:
    """Linear binning from cell sums onto the ``e`` nodes (see the module docstring): ``(e_buf, c)``."""
    dtype = cells.dtype
    nq = cells.shape[1] // 2
    qs, qu = cells[:, :nq], cells[:, nq:]
    cidx = jnp.arange(N_CELLS, dtype=jnp.int32)
    k = (cidx * (e - 1)) // N_CELLS  # node interval of each cell's left edge (int32: G (E_MAX - 1) < 2^31)
    a = (cidx * (e - 1) - k * N_CELLS).astype(dtype)[:, None]  # G * (left edge offset inside the interval)
    p1 = (a * qs + (e - 1).astype(dtype) * qu) / N_CELLS  # sum of q * frac per cell
    p0 = qs - p1
    # interval sums by cumulative sums at the first cell of each interval: ceil(k G / (e - 1))
    kk = jnp.arange(e_buf + 1, dtype=jnp.int32)
    first = jnp.where(kk <= e - 2, (kk * N_CELLS + e - 2) // (e - 1), N_CELLS)
    cs = jnp.concatenate([jnp.zeros((1, 2 * nq), dtype), jnp.cumsum(jnp.concatenate([p0, p1], 1), axis=0)], 0)
    sums = cs[first[1:]] - cs[first[:-1]]  # (e_buf, 2 nq): rows k < e - 1 are the intervals
    s0, s1 = sums[:, :nq], sums[:, nq:]
    return s0 + jnp.concatenate([jnp.zeros((1, nq), dtype), s1[:-1]], 0)


def _reflect_smooth(values: jax.Array, e: jax.Array, sigma: jax.Array, fft_len: int) -> jax.Array:
    """relplot's ``ReflectedGaussianKernel.convolve``: grid values ``(e_buf, c)`` (first ``e`` used) → same shape.

    ``ext = [values[e-1..1], values, values[e-2..0]]``; ``out[i] = Σ_m ext[i + e//2 + m] ker[m]`` with
    ``ker[m] = N(0, σ²) density at (m - (e-1)/2)/(e-1)``, ``m < e``. Computed as a circular FFT convolution of
    length ``fft_len >= 3 e - 2`` (no wrap-around reaches the outputs).
    """
    dtype = values.dtype
    e_buf = values.shape[0]
    p = jnp.arange(fft_len, dtype=jnp.int32)
    src = jnp.where(p < e - 1, e - 1 - p, jnp.where(p <= 2 * e - 2, p - (e - 1), 3 * e - 3 - p))
    ext = jnp.where((p < 3 * e - 2)[:, None], values[jnp.clip(src, 0, e_buf - 1)], 0)
    # out[i] = Σ_δ ext[i + e - 1 + δ] κ(δ), δ = m - s, s = e - 1 - e//2;  as a convolution with κ reversed
    s = e - 1 - e // 2
    d = jnp.where(p < fft_len // 2, p, p - fft_len)  # circular offset of the reversed kernel, κ_rev(d) = κ(-d)
    m = s - d
    x = (m.astype(dtype) - (e - 1).astype(dtype) / 2) / (e - 1).astype(dtype)
    kern = jnp.where((m >= 0) & (m < e), jnp.exp(-x * x / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma), 0)
    conv = jnp.fft.irfft(jnp.fft.rfft(ext, axis=0) * jnp.fft.rfft(kern)[:, None], n=fft_len, axis=0)
    return lax.dynamic_slice_in_dim(conv.astype(dtype), e - 1, e_buf, axis=0)


def _interp(smoothed: jax.Array, e: jax.Array, t: jax.Array) -> jax.Array:
    """relplot's ``interpolate``: the grid function ``k/(e-1) → smoothed[k]`` at points ``t``."""
    h = (e - 1).astype(t.dtype)
    k = jnp.clip(jnp.floor(t * h).astype(jnp.int32), 0, e - 2)
    w = (t * h - k.astype(t.dtype))[:, None]
    return smoothed[k] * (1 - w) + smoothed[k + 1] * w


def _eval_grid(values: jax.Array, e: jax.Array, tn: jax.Array, sigma: jax.Array, fft_len: int, t_buf: int):
    """Smoothed channels of the grid ``values`` at the ``tn`` points ``j/(tn-1)``: ``(t_buf, c)`` and a mask."""
    sm = _reflect_smooth(values, e, sigma, fft_len)
    j = jnp.arange(t_buf)
    t = j.astype(sm.dtype) / (tn - 1).astype(sm.dtype)
    return _interp(sm, e, t), j < tn


def _ratio(ev: jax.Array, keep: jax.Array) -> jax.Array:
    num = jnp.sum(jnp.where(keep, jnp.abs(ev[:, 0]), 0))
    den = jnp.sum(jnp.where(keep, ev[:, 1] + DENSITY_EPS, 0))
    return num / den


def _make_evaluator(f: jax.Array, y: jax.Array, cells: jax.Array | None = None):
    """``sigma -> smECE_σ`` for fixed data. Two static configurations: every ``σ ≥ 0.01`` shares the grid
    ``E = 1001`` (binned once, FFT of 4096, ``T ≤ 1001``); smaller ``σ`` bin again on the largest buffers.
    ``cells`` (from :func:`_host_cells`) replaces the data for large inputs."""
    if cells is None and f.shape[0] > CELLS_ABOVE:
        cells = _cell_sums(f, jnp.stack([f - y, jnp.ones_like(f)], axis=1))
    if cells is not None:
        bin_e = partial(_bin_cells, cells)
    else:
        bin_e = partial(_bin_points, f, jnp.stack([f - y, jnp.ones_like(f)], axis=1))
    e0 = jnp.asarray(E_COARSE, jnp.int32)
    coarse = bin_e(e0, E_COARSE)

    def at(sigma):
        e, tn = _sizes(sigma)
        small = lambda: _ratio(*_eval_grid(coarse, e0, tn, sigma, FFT_COARSE, T_COARSE))  # noqa: E731
        large = lambda: _ratio(*_eval_grid(bin_e(e, E_MAX), e, tn, sigma, FFT_LEN, T_MAX))  # noqa: E731
        return lax.cond(e == e0, small, large)

    return at


def _host_cells(f: np.ndarray, y: np.ndarray, dtype) -> jax.Array:
    """:func:`_cell_sums` of concrete inputs with ``np.bincount`` in float64 (XLA's CPU scatter-add is slow)."""
    f = np.asarray(f, np.float64)
    r = f - np.asarray(y, np.float64)
    c = np.minimum(np.floor(f * N_CELLS).astype(np.int64), N_CELLS - 1)
    u = f * N_CELLS - c
    cols = [np.bincount(c, w, minlength=N_CELLS) for w in (r, None, r * u, u)]
    return jnp.asarray(np.stack(cols, axis=1), dtype)


def _fixed_point(at, dtype, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """relplot's bisection for ``σ = smECE_σ``: (smECE at the upper end of the last bracket, that σ)."""
    one = jnp.asarray(1.0, dtype)
    v1 = at(one)

    def step(_, carry):
        start, end, v_start = carry
        mid = (start + end) / 2
        v = at(mid)
        below = (mid < eps) | (mid < v)  # σ below the fixed point
        return jnp.where(below, start, mid), jnp.where(below, mid, end), jnp.where(below, v_start, v)

    start, _, v = lax.fori_loop(0, N_STEPS, step, (one, jnp.zeros((), dtype), v1))
    done = (one < eps) | (one < v1)  # relplot returns sigma = 1 at once
    return jnp.where(done, v1, v), jnp.where(done, one, start)


@jax.jit
def _smooth_ece_core(f: jax.Array, y: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(smECE at σ*, σ*) by relplot's bisection; ``f``, ``y``: ``(n,)`` confidences and 0/1 outcomes."""
    return _fixed_point(_make_evaluator(f, y), f.dtype, eps)


@jax.jit
def _smooth_ece_cells_core(cells: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _fixed_point(_make_evaluator(None, None, cells), cells.dtype, eps)


@jax.jit
def _smooth_ece_sigma_core(f: jax.Array, y: jax.Array, sigma: jax.Array) -> jax.Array:
    return _make_evaluator(f, y)(sigma)


# ------------------------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------------------------
def smooth_ece(probs: Any, labels: Any, *, eps: float = 1e-3, return_sigma: bool = False) -> Any:
    r"""Smooth expected calibration error (smECE) with the bandwidth fixed point ``σ* = smECE_σ*``.

    Reflected-Gaussian kernel smoothing of the residuals ``r_i = f_i - y_i`` over ``f ∈ [0, 1]``:
    ``smECE_σ = ∫ |r̂_σ(t)| δ̂_σ(t) dt / ∫ δ̂_σ(t) dt`` with ``r̂_σ`` the smoothed residual and ``δ̂_σ`` the smoothed
    density, evaluated at the fixed point ``σ* = smECE_σ*`` found by bisection. Discretized exactly as
    ``relplot.smECE(f, y, eps)`` (relplot 1.0.3; see the module docstring for the grid, the reflection, the
    normalization and the bisection), so values agree with relplot to rounding; tested within ``1e-4`` (measured
    ``< 1e-9`` in float64). ``smECE`` is continuous in the predictions, unlike the binned :func:`ece`, and
    ``smECE/2 ≤ dCE ≤ 2 smECE`` bounds the distance to calibration (Błasiok–Nakkiran).

    Binary: ``probs (n,)`` are the probabilities of class 1 and ``labels`` are 0/1 (``f = p``, ``y = label``).
    Multiclass ``(n, C)``: top-label, ``f = max_k p_k`` and ``y = [argmax_k p_k == label]``.

    Args:
      probs: ``(n,)`` probabilities of the positive class, or ``(n, C)`` probabilities (rows sum to 1).
      labels: ``(n,)`` integer labels (0/1 for binary, ``[0, C)`` for multiclass).
      eps: bandwidths below ``eps`` count as below the fixed point (relplot's ``eps``), in ``[0, 1)``.
      return_sigma: also return the bandwidth ``σ*``.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` in the dtype of ``probs`` (ints → default float); with
      ``return_sigma=True`` a pair ``(smece, sigma)``. Works under ``jit``/``vmap`` (value checks need concrete
      inputs or :func:`jaxcompare.checked`). Float32 agrees with float64 to about ``1e-5``.

    Example:
      >>> import jax.numpy as jnp
      >>> f = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9] * 20)
      >>> y = jnp.array([0, 0, 1, 1, 1] * 20)
      >>> round(float(smooth_ece(f, y)), 4)           # relplot.smECE(f, y): 0.170748
      0.1707

    References:
      Błasiok & Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing", ICLR 2024.
    """
    f, y = _check_binary_or_top(probs, labels)
    check_float(eps, "eps", low=0.0, high=1.0, high_open=True)
    eps_a = jnp.asarray(eps, f.dtype)
    if f.shape[0] > CELLS_ABOVE and f.dtype == np.float64 and is_concrete(f) and is_concrete(y):
        value, sigma = _smooth_ece_cells_core(_host_cells(f, y, f.dtype), eps_a)
    else:
        value, sigma = _smooth_ece_core(f, y, eps_a)
    return (value, sigma) if check_flag(return_sigma, "return_sigma") else value


def smooth_ece_sigma(probs: Any, labels: Any, sigma: Any) -> jax.Array:
    """``smECE_σ`` at a given bandwidth (no fixed point), as ``relplot.smECE_sigma(f, y, sigma)``.

    Args:
      probs: ``(n,)`` or ``(n, C)`` probabilities (see :func:`smooth_ece`).
      labels: ``(n,)`` labels.
      sigma: bandwidth in ``[2⁻¹⁰, 1]`` (the range of the fixed-point search; grids are sized for it).

    Returns:
      Scalar ``jax.Array`` (not monotone in ``sigma`` in general).

    Example:
      >>> import jax.numpy as jnp
      >>> f = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9] * 20)
      >>> y = jnp.array([0, 0, 1, 1, 1] * 20)
      >>> bool(smooth_ece_sigma(f, y, 0.05) > smooth_ece_sigma(f, y, 0.3))
      True
    """
    f, y = _check_binary_or_top(probs, labels)
    check_float(sigma, "sigma", low=SIGMA_MIN, high=1.0)
    traced_range(sigma, "sigma", SIGMA_MIN, 1.0)
    return _smooth_ece_sigma_core(f, y, jnp.asarray(sigma, f.dtype))


# ------------------------------------------------------------------------------------------------------------------
# the smoothed reliability curve (for diagrams)
# ------------------------------------------------------------------------------------------------------------------
@jax.jit
def _curve_core(f: jax.Array, y: jax.Array, sigma: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Kernel-smoothed ``E[y | f = t]`` and the reflected-kernel density of ``f`` (relplot's grid at ``sigma``)."""
    e, _ = _sizes(sigma)
    values = _bin_points(f, jnp.stack([y, jnp.ones_like(f)], axis=1), e, E_MAX)
    ev = _interp(_reflect_smooth(values, e, sigma, FFT_LEN), e, t)
    n = jnp.asarray(f.shape[0], f.dtype)
    density = ev[:, 1] / n  # Σ_k (counts near k h) K(t - k h) ≈ n p(t): the kernel is a density sampled on the grid
    return ev[:, 0] / (ev[:, 1] + DENSITY_EPS), density
