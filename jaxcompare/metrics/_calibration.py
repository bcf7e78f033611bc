"""Expected calibration error (ECE): top-label or classwise, equal-width or equal-mass bins."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import (
    at_least_float32,
    check_array,
    check_choice,
    check_flag,
    check_int,
    check_labels,
    check_same_length,
    is_concrete,
)

__all__ = ["ece", "reliability_bins", "ReliabilityBins"]

_BINNINGS = ("uniform", "quantile")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (empty bins have ``count == 0`` and zero means).

    Attributes:
      count: ``(B,)`` number of points per bin.
      accuracy: ``(B,)`` mean correctness in each bin.
      confidence: ``(B,)`` mean confidence in each bin.
    """

    count: jax.Array
    accuracy: jax.Array
    confidence: jax.Array


def _check_probs(probs: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    p = at_least_float32(check_array(probs, "probs", ndim=2))
    if p.shape[1] < 2:
        raise ValueError(
            f"probs must have at least 2 columns (one per class), got shape {p.shape}; "
            "for binary logit gaps s use jaxcompare.metrics.binary_probs(s)."
        )
    if is_concrete(p):
        a = np.asarray(p, dtype=np.float64)
        if a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"probs must lie in [0, 1], got values from {a.min():g} to {a.max():g}; "
                "pass probabilities (e.g. jax.nn.softmax(logits)), not logits."
            )
        dev = float(np.abs(a.sum(axis=1) - 1.0).max())
        if dev > 1e-3:
            raise ValueError(
                f"probs rows must sum to 1, got a maximum deviation of {dev:.3g}; "
                "pass probabilities (e.g. jax.nn.softmax(logits))."
            )
    y = check_labels(labels, "labels", p.shape[1])
    check_same_length({"probs": p, "labels": y})
    return p, y


def _bin_index(conf: jax.Array, n_bins: int, binning: str) -> jax.Array:
    """Bin of each confidence: equal-width ``[k/B, (k+1)/B)`` (1.0 in the last bin) or equal-mass by rank."""
    if binning == "uniform":
        inner = jnp.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype)[1:-1]
        return jnp.searchsorted(inner, conf, side="right")
    n = conf.shape[0]
    order = jnp.argsort(conf, stable=True)
    rank_bin = (jnp.arange(n) * n_bins) // n
    return jnp.zeros((n,), jnp.int32).at[order].set(rank_bin.astype(jnp.int32))


def _binned_sums(conf: jax.Array, hit: jax.Array, n_bins: int, binning: str):
    idx = _bin_index(conf, n_bins, binning)
    count = jax.ops.segment_sum(jnp.ones_like(conf), idx, n_bins)
    s_conf = jax.ops.segment_sum(conf, idx, n_bins)
    s_hit = jax.ops.segment_sum(hit.astype(conf.dtype), idx, n_bins)
    return count, s_conf, s_hit


def _ece_1d(conf: jax.Array, hit: jax.Array, n_bins: int, binning: str) -> jax.Array:
    # sum_b (|B_b|/n) |acc_b - conf_b| = (1/n) sum_b |sum_{i in b} hit_i - sum_{i in b} conf_i|
    _, s_conf, s_hit = _binned_sums(conf, hit, n_bins, binning)
    return jnp.sum(jnp.abs(s_hit - s_conf)) / conf.shape[0]


def ece(probs: Any, labels: Any, *, n_bins: int = 15, binning: str = "uniform", classwise: bool = False) -> jax.Array:
    r"""Expected calibration error (Guo et al. 2017).

    Top-label (default): confidence ``c_i = max_k p_ik``, correctness ``h_i = [argmax_k p_ik == y_i]``,

    ``ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)|``.

    Bins: ``binning="uniform"`` (default) uses ``B`` equal-width bins ``[k/B, (k+1)/B)``, a confidence of exactly
    1.0 falling in the last bin (the torchmetrics convention); ``binning="quantile"`` uses equal-mass bins: points
    sorted by confidence (stable, ties in input order) and cut into ``B`` groups of ``floor``/``ceil(n/B)`` points.
    The default of 15 bins follows torchmetrics (netcal and relplot use 10). ``classwise=True`` computes, for every
    class ``k``, the binned calibration error of ``p_ik`` against ``[y_i == k]`` and averages over classes
    (classwise-ECE of Kull et al. 2019).

    For a binary model with logit gaps ``s`` use ``ece(binary_probs(s), y)``.

    Args:
      probs: ``(n, C)`` probabilities (rows sum to 1, ``C >= 2``).
      labels: ``(n,)`` true labels in ``[0, C)``.
      n_bins: number of bins ``B >= 1``.
      binning: ``"uniform"`` or ``"quantile"``.
      classwise: average the per-class calibration errors instead of using the top label.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` in the dtype of ``probs``.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([[0.1, 0.9], [0.1, 0.9]])
      >>> round(float(ece(p, jnp.array([1, 0]))), 6)   # confidence 0.9, accuracy 0.5
      0.4
    """
    n_bins = check_int(n_bins, "n_bins", min=1)
    check_choice(binning, "binning", _BINNINGS)
    p, y = _check_probs(probs, labels)
    return _ece(p, y, n_bins, binning, check_flag(classwise, "classwise"))


@jax.jit(static_argnums=(2, 3, 4))
def _ece(p: jax.Array, y: jax.Array, n_bins: int, binning: str, classwise: bool) -> jax.Array:
    if classwise:
        classes = jnp.arange(p.shape[1])
        hits = y[None, :] == classes[:, None]
        per_class = jax.vmap(lambda c, h: _ece_1d(c, h, n_bins, binning))(p.T, hits)
        return jnp.mean(per_class)
    conf = jnp.max(p, axis=1)
    hit = jnp.argmax(p, axis=1) == y
    return _ece_1d(conf, hit, n_bins, binning)


def reliability_bins(probs: Any, labels: Any, *, n_bins: int = 15, binning: str = "uniform") -> ReliabilityBins:
    """Top-label reliability diagram: per-bin counts, accuracy and mean confidence (same bins as :func:`ece`).

    ``ece == sum(count * |accuracy - confidence|) / n``.

    Args:
      probs: ``(n, C)`` probabilities.
      labels: ``(n,)`` true labels.
      n_bins: number of bins.
      binning: ``"uniform"`` or ``"quantile"``.

    Returns:
      :class:`ReliabilityBins` with ``(n_bins,)`` arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> rb = reliability_bins(jnp.array([[0.05, 0.95], [0.05, 0.95]]), jnp.array([1, 0]), n_bins=10)
      >>> int(rb.count[9]), float(rb.accuracy[9])
      (2, 0.5)
    """
    n_bins = check_int(n_bins, "n_bins", min=1)
    check_choice(binning, "binning", _BINNINGS)
    p, y = _check_probs(probs, labels)
    conf = jnp.max(p, axis=1)
    hit = jnp.argmax(p, axis=1) == y
    count, s_conf, s_hit = _binned_sums(conf, hit, n_bins, binning)
    safe = jnp.maximum(count, 1)
    return ReliabilityBins(count=count.astype(jnp.int32), accuracy=s_hit / safe, confidence=s_conf / safe)
