"""Reliability diagram with the smooth-ECE curve and a bootstrap band (matplotlib, imported lazily)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._optional import optional_import
from .._validation import check_float, check_int, check_key, check_probability
from ._smooth_ece import _check_binary_or_top, _curve_core, _smooth_ece_core

__all__ = ["SmoothReliability", "smooth_reliability", "plot_reliability"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SmoothReliability:
    """The data of a smoothed reliability diagram (:func:`smooth_reliability`).

    Attributes:
      t: ``(m,)`` prediction values in ``[0, 1]``.
      mean: ``(m,)`` kernel-smoothed ``E[y | f = t]`` at the bandwidth ``sigma``.
      lower, upper: ``(m,)`` pointwise percentile-bootstrap band of ``mean`` (equal to ``mean`` without a key).
      density: ``(m,)`` reflected-kernel density of the predictions.
      sigma: the smooth-ECE bandwidth ``σ*``.
      smece: the smooth ECE.
    """

    t: jax.Array
    mean: jax.Array
    lower: jax.Array
    upper: jax.Array
    density: jax.Array
    sigma: jax.Array
    smece: jax.Array


@partial(jax.jit, static_argnums=(5, 6))
def _band(key, f, y, sigma, t, n_boot: int, level: float):
    n = f.shape[0]

    def one(k):
        idx = jax.random.randint(k, (n,), 0, n, dtype=jnp.int32)  # 32-bit: the same resamples with or without x64
        return _curve_core(f[idx], y[idx], sigma, t)[0]

    reps = lax.map(one, jax.random.split(key, n_boot), batch_size=min(16, n_boot))
    q = jnp.asarray([(1 - level) / 2, (1 + level) / 2], f.dtype)
    lo, hi = jnp.quantile(reps, q, axis=0)
    return lo, hi


def smooth_reliability(
    probs: Any,
    labels: Any,
    *,
    key: Any = None,
    n_boot: int = 200,
    level: float = 0.95,
    n_points: int = 201,
    eps: float = 1e-3,
) -> SmoothReliability:
    """Smoothed reliability curve at the smooth-ECE bandwidth, with an optional bootstrap band.

    The curve is ``ŷ(t) = Σ_i K_σ*(t, f_i) y_i / Σ_i K_σ*(t, f_i)`` (reflected Gaussian kernel, relplot's grid);
    the band re-smooths ``n_boot`` resamples of the points at the same ``σ*`` and takes pointwise quantiles.

    Args:
      probs: ``(n,)`` probabilities of class 1 or ``(n, C)`` probabilities (top-label).
      labels: ``(n,)`` labels.
      key: ``jax.random.key`` for the band; ``None`` gives no band (``lower == upper == mean``).
      n_boot: resamples for the band.
      level: pointwise band level in ``(0, 1)``.
      n_points: number of points ``t`` on ``[0, 1]``.
      eps: as :func:`jaxcompare.smooth_ece`.

    Returns:
      :class:`SmoothReliability`.

    Example:
      >>> import jax
      >>> f = jax.random.uniform(jax.random.key(0), (2000,))
      >>> y = (jax.random.uniform(jax.random.key(1), (2000,)) < f ** 2).astype(int)   # over-confident
      >>> r = smooth_reliability(f, y, n_points=5)
      >>> [round(float(v), 2) for v in r.mean]          # below the diagonal t = 0, 0.25, ..., 1
      [0.02, 0.08, 0.26, 0.54, 0.74]
    """
    f, y = _check_binary_or_top(probs, labels)
    n_points = check_int(n_points, "n_points", min=2)
    n_boot = check_int(n_boot, "n_boot", min=2)
    check_probability(level, "level")
    check_float(eps, "eps", low=0.0, high=1.0, high_open=True)  # as smooth_ece
    smece, sigma = _smooth_ece_core(f, y, jnp.asarray(eps, f.dtype))
    t = jnp.linspace(0, 1, n_points, dtype=f.dtype)
    mean, density = _curve_core(f, y, sigma, t)
    if key is None:
        lo, hi = mean, mean
    else:
        lo, hi = _band(check_key(key), f, y, sigma, t, n_boot, float(level))
    return SmoothReliability(t=t, mean=mean, lower=lo, upper=hi, density=density, sigma=sigma, smece=smece)


def plot_reliability(
    probs: Any,
    labels: Any,
    *,
    key: Any = None,
    n_boot: int = 200,
    level: float = 0.95,
    ax: Any = None,
    title: str | None = None,
    bins: int = 50,
    eps: float = 1e-3,
):
    """Reliability diagram: the smoothed curve with its bootstrap band over the diagonal, and a histogram of the
    predictions underneath.

    Args:
      probs: ``(n,)`` probabilities of class 1 or ``(n, C)`` probabilities (top-label: confidence vs accuracy).
      labels: ``(n,)`` labels.
      key: ``jax.random.key`` for the bootstrap band (and the smooth-ECE interval in the title); ``None``: no band.
      n_boot: resamples for the band and the interval.
      level: band and interval level.
      ax: a pair ``(curve_axes, histogram_axes)`` to draw on; a new figure otherwise.
      title: figure title (default: the smooth ECE with its interval).
      bins: histogram bins.
      eps: as :func:`jaxcompare.smooth_ece`.

    Returns:
      The ``matplotlib.figure.Figure`` (needs matplotlib: ``pip install 'jaxcompare[demo]'``).

    Example:
      >>> import jax
      >>> f = jax.random.uniform(jax.random.key(0), (2000,))
      >>> y = (jax.random.uniform(jax.random.key(1), (2000,)) < f ** 2).astype(int)
      >>> fig = plot_reliability(f, y, key=jax.random.key(2), n_boot=50)
      >>> [a.get_xlabel() for a in fig.axes]
      ['', 'predicted probability']
    """
    plt = optional_import("matplotlib.pyplot", purpose="plot_reliability")
    from ._intervals import smooth_ece_interval

    bins = check_int(bins, "bins", min=1)
    multiclass = np.ndim(probs) == 2
    r = smooth_reliability(probs, labels, key=key, n_boot=n_boot, level=level, eps=eps)
    f, _ = _check_binary_or_top(probs, labels)
    if ax is None:
        fig, (ax0, ax1) = plt.subplots(
            2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
        )
    else:
        ax0, ax1 = ax
        fig = ax0.figure
    t, mean = np.asarray(r.t), np.asarray(r.mean)
    ax0.plot([0, 1], [0, 1], ls="--", color="0.55", lw=1, label="perfect calibration")
    if key is not None:
        ax0.fill_between(
            t,
            np.asarray(r.lower),
            np.asarray(r.upper),
            color="C0",
            alpha=0.25,
            lw=0,
            label=f"{level:.0%} bootstrap band",
        )
    ax0.plot(t, mean, color="C0", lw=2, label=f"smoothed (σ* = {float(r.sigma):.3f})")
    ax0.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy" if multiclass else "observed frequency")
    ax0.set_aspect("auto")
    ax0.grid(alpha=0.3)
    ax0.legend(loc="best", fontsize=9, frameon=False)
    if title is None:
        title = f"smooth ECE = {float(r.smece):.4f}"
        if key is not None:
            ci = smooth_ece_interval(
                jax.random.fold_in(check_key(key), 1), probs, labels, n_boot=n_boot, level=level, eps=eps
            )
            title += f",  {level:.0%} CI [{float(ci.lower):.4f}, {float(ci.upper):.4f}]"
    ax0.set_title(title, fontsize=11)
    ax1.hist(np.asarray(f), bins=bins, range=(0, 1), color="0.45")
    ax1.set(xlabel="confidence (max probability)" if multiclass else "predicted probability", ylabel="count")
    ax1.grid(alpha=0.3)
    return fig
