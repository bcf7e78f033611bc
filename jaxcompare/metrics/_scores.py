"""Scalar scores from multiclass logits: the soft decision per model and point that α̂ compares."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._validation import at_least_float32, check_array, check_choice, check_labels

__all__ = ["logit_scores", "SCORE_REDUCTIONS"]

#: Names accepted by :func:`logit_scores` (and by ``jaxcompare alpha --score``).
SCORE_REDUCTIONS = ("margin", "logit_gap", "true_logprob")
_NEEDS_LABELS = ("margin", "true_logprob")


def logit_scores(logits: Any, labels: Any = None, *, score: str = "margin") -> jax.Array:
    r"""Reduce ``(..., T, C)`` logits to one real score per model and test point (the input of α̂).

    α̂ and the bootstrap protocol compare *scalar* soft decisions. With logits ``l ∈ ℝ^C`` of a point whose label is
    ``y``:

    - ``"margin"`` (labels needed): ``l_y − max_{c≠y} l_c``, positive iff the point is classified correctly, and its
      size is the confidence of that decision; the published choice for multiclass models.
    - ``"logit_gap"`` (label-free): for ``C = 2`` the binary decision ``l₁ − l₀`` (its sign is the predicted class);
      for ``C > 2`` the gap between the two largest logits ``l_(1) − l_(2) ≥ 0`` (confidence without correctness).
    - ``"true_logprob"`` (labels needed): ``log softmax(l)_y = l_y − log Σ_c e^{l_c} ≤ 0``, the negative cross-entropy
      of the point; it also reflects how the remaining mass is spread.

    All three are invariant to adding a constant to every logit.

    Args:
      logits: ``(..., T, C)`` logits with ``C ≥ 2`` (e.g. ``(M, T, C)`` for ``M`` models on ``T`` points).
      labels: ``(T,)`` integer labels in ``[0, C)``, shared by the leading axes; required by ``"margin"`` and
        ``"true_logprob"``, ignored by ``"logit_gap"``.
      score: one of :data:`SCORE_REDUCTIONS`.

    Returns:
      ``(..., T)`` scores in the floating dtype of ``logits`` (float32 for float16/bfloat16). Under ``jit`` the
      labels' values cannot be checked: out-of-range labels (negative ones too) then give NaN scores.

    Example:
      >>> l = jnp.array([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]])
      >>> logit_scores(l, jnp.array([0, 2])).tolist()
      [1.0, -2.0]
      >>> logit_scores(l, score="logit_gap").tolist()
      [1.0, 2.0]
    """
    check_choice(score, "score", SCORE_REDUCTIONS)
    a = at_least_float32(check_array(logits, "logits"))  # a float16 margin of 6e4 - (-6e4) overflows
    if a.ndim < 2 or a.shape[-1] < 2:
        raise ValueError(f"logits must have shape (..., T, C) with C >= 2 classes, got shape {a.shape}.")
    if score in _NEEDS_LABELS:
        if labels is None:
            raise ValueError(
                f'score="{score}" needs the true labels; pass labels, or use score="logit_gap" (label-free).'
            )
        y = check_labels(labels, "labels", a.shape[-1], length=a.shape[-2])
        return _labelled(a, y, score)
    return _gap(a)


@jax.jit
def _gap(a: jax.Array) -> jax.Array:
    if a.shape[-1] == 2:
        return a[..., 1] - a[..., 0]
    top2 = jax.lax.top_k(a, 2)[0]
    return top2[..., 0] - top2[..., 1]


@jax.jit(static_argnames="score")
def _labelled(a: jax.Array, y: jax.Array, score: str) -> jax.Array:
    yb = jnp.broadcast_to(y[:, None], (*a.shape[:-1], 1))
    # (take_along_axis reads a negative label from the end, as Python does: -1 gave the last class's score)
    valid = (yb[..., 0] >= 0) & (yb[..., 0] < a.shape[-1])
    correct = jnp.where(valid, jnp.take_along_axis(a, yb, axis=-1, mode="fill", fill_value=jnp.nan)[..., 0], jnp.nan)
    if score == "true_logprob":
        return correct - jax.nn.logsumexp(a, axis=-1)
    is_y = jnp.arange(a.shape[-1]).reshape((1,) * (a.ndim - 1) + (a.shape[-1],)) == yb
    other = jnp.max(jnp.where(is_y, -jnp.inf, a), axis=-1)
    return correct - other
