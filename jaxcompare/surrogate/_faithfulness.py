"""Faithfulness of a surrogate to a network on a test set: TAD, Kendall τ_K, R_Miss, optional R²
(spec/surrogate.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_labels
from .._validation import check_array, check_choice, check_labels, is_concrete

__all__ = ["Faithfulness", "faithfulness"]

_R2_LINKS = (None, "linear", "isotonic")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """How faithful a surrogate is to a network (immutable pytree).

    Attributes:
      tad: test accuracy difference, surrogate minus network (a fraction: ``-0.021`` is ``-2.1 %``).
      kendall_tau: Kendall τ-b between the two models' probabilities of the correct class, over test points.
      r_miss: Jaccard overlap of the error sets, ``|E_net ∩ E_sur| / |E_net ∪ E_sur|`` (1 when neither errs).
      surrogate_accuracy, network_accuracy: test accuracies.
      r2: R² of the network's (row-centered) logits predicted from the surrogate's through a fitted monotone link,
        or None when not requested.
    """

    tad: jax.Array
    kendall_tau: jax.Array
    r_miss: jax.Array
    surrogate_accuracy: jax.Array
    network_accuracy: jax.Array
    r2: jax.Array | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Plain Python floats (``r2`` None when not computed)."""
        return {
            f.name: (None if getattr(self, f.name) is None else float(getattr(self, f.name)))
            for f in dataclasses.fields(self)
        }


def _correct_class_key(logits: jax.Array, probs: jax.Array | None, y: jax.Array) -> jax.Array:
    """A ranking key of ``p(y | x)``, the probability of the correct class: ``-logsumexp_{j≠y}(z_j - z_y)``, the
    log-odds of the correct class against all others (``log p_y = -softplus(−key)``: the same order as ``p_y``).

    ``log_softmax`` is exactly 0 in float32 once the margin exceeds ~17, and even ``-log1p(Σ_{j≠y} e^{z_j - z_y})``
    once it exceeds ~88 (every term underflows): confident points then tie, and a fully accurate network's τ_K was
    undefined ("x is constant"). The log-odds never underflow. The terms are sorted before they are summed, so that
    equal probabilities (logits that are permutations of each other) give equal keys and tie, as they should, not
    an order that the summation happened to produce. Given probabilities: ``log Σ_{j≠y} p_j − log p_y`` (others'
    mass at least the smallest normal number).
    """
    C = (logits if probs is None else probs).shape[1]
    other = jnp.arange(C)[None, :] != y[:, None]
    if probs is None:
        zy = jnp.take_along_axis(logits, y[:, None], axis=1)
        d = jnp.sort(jnp.where(other, logits - zy, -jnp.inf), axis=1)  # the other classes' gaps, ascending
        return -jax.scipy.special.logsumexp(d, axis=1)
    tiny = jnp.finfo(probs.dtype).tiny
    py = jnp.maximum(jnp.take_along_axis(probs, y[:, None], axis=1)[:, 0], tiny)
    rest = jnp.sum(jnp.sort(jnp.where(other, probs, 0.0), axis=1), axis=1)
    return jnp.log(py) - jnp.log(jnp.maximum(rest, tiny))


@jax.jit
def _core(zn, zs, y, pn, ps):
    wrong_n = jnp.argmax(zn, axis=1) != y
    wrong_s = jnp.argmax(zs, axis=1) != y
    acc_n = 1.0 - jnp.mean(wrong_n.astype(zn.dtype))
    acc_s = 1.0 - jnp.mean(wrong_s.astype(zs.dtype))
    union = jnp.sum(wrong_n | wrong_s)
    inter = jnp.sum(wrong_n & wrong_s)
    r_miss = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0).astype(zn.dtype)
    return acc_s, acc_n, r_miss, _correct_class_key(zn, pn, y), _correct_class_key(zs, ps, y)


def _center_rows(z: jax.Array) -> jax.Array:
    return (z - jnp.mean(z, axis=1, keepdims=True)).reshape(-1)


def _r2_linear(target: jax.Array, pred: jax.Array) -> jax.Array:
    """R² of ``target ≈ a · pred + c`` by least squares with ``a >= 0`` (monotone non-decreasing link)."""
    pc = pred - jnp.mean(pred)
    tc = target - jnp.mean(target)
    a = jnp.maximum(jnp.sum(pc * tc) / jnp.maximum(jnp.sum(pc * pc), jnp.finfo(pc.dtype).tiny), 0.0)
    ss_res = jnp.sum((tc - a * pc) ** 2)
    return 1.0 - ss_res / jnp.sum(tc * tc)


def _r2_isotonic(target: Any, pred: Any) -> float:
    """R² of ``target ≈ g(pred)`` for the least-squares non-decreasing ``g`` (pool-adjacent-violators, SciPy)."""
    try:
        from scipy.optimize import isotonic_regression
    except ImportError as e:  # SciPy < 1.12
        raise ImportError(
            "r2='isotonic' needs scipy>=1.12 (scipy.optimize.isotonic_regression); use r2='linear' or upgrade SciPy."
        ) from e
    t = np.asarray(target, np.float64)
    p = np.asarray(pred, np.float64)
    order = np.lexsort((t, p))  # by prediction; ties by target
    fit = np.empty_like(t)
    fit[order] = isotonic_regression(t[order]).x
    return 1.0 - float(np.sum((t - fit) ** 2) / np.sum((t - t.mean()) ** 2))


def faithfulness(
    network_logits: Any,
    surrogate_logits: Any,
    labels: Any,
    *,
    network_probs: Any = None,
    surrogate_probs: Any = None,
    r2: str | None = None,
) -> Faithfulness:
    r"""Faithfulness of a surrogate (e.g. a kGLM) to a network on the same test points.

    * ``TAD = acc(surrogate) − acc(network)`` (predictions are the argmax of the logits);
    * ``τ_K = τ_b(p_net(y_t | x_t), p_sur(y_t | x_t))`` over test points ``t`` — Kendall's τ-b
      (:func:`jaxcompare.kendall_tau`, as ``scipy.stats.kendalltau``) between the probabilities each model gives
      the correct class, softmax of the logits unless ``*_probs`` are given (ranked through the log-odds of the
      correct class, ``-logsumexp_{j≠y}(z_j - z_y)``, summed in sorted order: they keep float32 resolution where
      the probability rounds to 1, at any margin, equal probabilities tie, and τ is unchanged);
    * ``R_Miss = |E_net ∩ E_sur| / |E_net ∪ E_sur|`` with ``E`` the misclassified test points (1 if both are
      perfect);
    * optional ``R²`` of the row-centered network logits (softmax is invariant to a per-row shift) predicted from
      the row-centered surrogate logits through a monotone link: ``"linear"`` (``a·z + c``, ``a >= 0``) or
      ``"isotonic"`` (any non-decreasing function; host-side SciPy, not traceable).

    Args:
      network_logits: ``(T, C)`` the network's logits on the test points.
      surrogate_logits: ``(T, C)`` the surrogate's logits (``kglm_logits``).
      labels: ``(T,)`` true labels in ``[0, C)``.
      network_probs, surrogate_probs: optional ``(T, C)`` probabilities (rows summing to 1) replacing the softmax
        for τ_K (e.g. :func:`kglm_proba` of a one-vs-rest kGLM, which normalizes sigmoids as scikit-learn).
      r2: None, ``"linear"`` or ``"isotonic"``.

    Returns:
      :class:`Faithfulness` (``.as_dict()`` for floats). Works under ``jit`` except ``r2="isotonic"``.

    Example:
      >>> F = jax.random.normal(jax.random.key(0), (30, 5), jnp.float32)  # 30 points, 5 random features
      >>> K = F @ F.T                                           # a (30, 30) linear kernel on them
      >>> y = jnp.argmax(F[:, :3], axis=1)                      # labels of 3 classes
      >>> model = jc.fit_kglm(K[:20, :20], y[:20])              # the first 20 points train
      >>> noise = jax.random.normal(jax.random.key(1), (10, 3), F.dtype)
      >>> nn_logits = 3 * F[20:, :3] + noise                    # stands in for a network's logits on the test points
      >>> report = jc.faithfulness(nn_logits, jc.kglm_logits(model, K[20:, :20]), y[20:])
      >>> round(float(report.tad), 3), round(float(report.kendall_tau), 3), round(float(report.r_miss), 3)
      (0.0, 0.378, 1.0)
      >>> round(float(report.surrogate_accuracy), 3), round(float(report.network_accuracy), 3)  # the same mistake
      (0.9, 0.9)
    """
    from ..metrics import kendall_tau  # the metrics subpackage imports nothing from here

    zn = check_array(network_logits, "network_logits", ndim=2)
    zs = check_array(surrogate_logits, "surrogate_logits", ndim=2, shape=tuple(zn.shape))
    T, C = zn.shape
    if T < 2:
        raise ValueError(f"faithfulness needs at least 2 test points, got {T}.")
    traced_finite(zn, "network_logits")
    traced_finite(zs, "surrogate_logits")
    traced_labels(labels, "labels", C)
    y = check_labels(labels, "labels", C, length=T)
    link = check_choice(r2, "r2", _R2_LINKS)
    probs = []
    for name, p in (("network_probs", network_probs), ("surrogate_probs", surrogate_probs)):
        if p is not None:
            p = check_array(p, name, shape=(T, C))
            traced_finite(p, name)
            if is_concrete(p) and np.any(np.asarray(p) < 0):
                raise ValueError(f"{name} must be probabilities (non-negative), got negative entries.")
        probs.append(p)

    acc_s, acc_n, r_miss, xn, xs = _core(zn, zs, y, probs[0], probs[1])
    try:
        tau = kendall_tau(xn, xs)
    except ValueError as e:
        raise ValueError(
            f"Kendall τ_K is undefined for these inputs ({e}); x holds the network's and y the "
            f"surrogate's log-odds of the correct class."
        ) from None
    r2_val = None
    if link == "linear":
        r2_val = jax.jit(_r2_linear)(_center_rows(zn), _center_rows(zs))
    elif link == "isotonic":
        if not (is_concrete(zn) and is_concrete(zs)):
            raise ValueError("r2='isotonic' runs on the host and cannot be traced; use r2='linear' under jit.")
        r2_val = jnp.asarray(_r2_isotonic(_center_rows(zn), _center_rows(zs)), zn.dtype)
    return Faithfulness(
        tad=acc_s - acc_n, kendall_tau=tau, r_miss=r_miss, surrogate_accuracy=acc_s, network_accuracy=acc_n, r2=r2_val
    )
