"""Scalar scores from multiclass logits: the per-point soft decision α̂ compares between models."""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_array, check_choice, check_labels

__all__ = ["score_reduction", "SCORE_KINDS"]

#: Names accepted by :func:`score_reduction` (``kind=``), with one line each; the same names and definitions as
#: ``jaxcompare.metrics.logit_scores`` (``SCORE_REDUCTIONS``), so that the two can be merged.
SCORE_KINDS = {
    "margin": "true-class logit minus the largest other logit (negative where the model errs)",
    "logit_gap": "l1 - l0 for two classes; else the largest logit minus the second largest (label-free)",
    "true_logprob": "log-probability of the true class, log softmax(logits)[y]",
}


def score_reduction(logits: Any, labels: Any = None, kind: str = "margin") -> jax.Array:
    r"""Reduce ``(..., n, C)`` logits to one scalar score per point, the input of α̂.

    With logits ``ℓ ∈ R^C`` of a point whose true label is ``y``:

    * ``"margin"``: ``ℓ_y − max_{k≠y} ℓ_k`` (the correct-class margin; for two classes, ``±`` the logit gap
      ``ℓ₁ − ℓ₀`` of spec/trimming.md, signed so that positive means correct);
    * ``"logit_gap"`` (label-free): for ``C = 2`` the binary logit gap ``ℓ₁ − ℓ₀`` of spec/trimming.md (its sign is
      the predicted class); for ``C > 2`` the top logit minus the runner-up, ``ℓ_(1) − ℓ_(2) ≥ 0``;
    * ``"true_logprob"``: ``log softmax(ℓ)_y = ℓ_y − logsumexp(ℓ)`` (``≤ 0``).

    All three are unchanged by adding a constant to every logit.

    Leading axes (e.g. models ``(K, n, C)``) are kept: the labels ``(n,)`` are shared.

    Args:
      logits: ``(n, C)`` or ``(..., n, C)`` logits, ``C >= 2``.
      labels: ``(n,)`` true labels in ``[0, C)``; required for ``"margin"`` and ``"true_logprob"``.
      kind: one of :data:`SCORE_KINDS`.

    Returns:
      ``(..., n)`` scores in the floating dtype of ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> l = jnp.array([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]])
      >>> score_reduction(l, jnp.array([0, 0]), "margin").tolist()
      [1.0, -3.0]
      >>> score_reduction(l, kind="logit_gap").tolist()
      [1.0, 2.0]

    References:
      S. Banerjee et al. (2025), the α-trimmed comparison of models (per-model scalar soft decisions);
      spec/trimming.md of this repository.
    """
    check_choice(kind, "kind", tuple(SCORE_KINDS))
    z = check_array(logits, "logits", ndim=tuple(range(2, 8)))
    if z.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes (last axis), got shape {z.shape}.")
    if kind == "logit_gap":
        return _logit_gap(z)
    if labels is None:
        raise ValueError(f"labels are required for kind={kind!r} (the true class of each point); "
                         "kind='logit_gap' needs none.")
    y = check_labels(labels, "labels", z.shape[-1])
    if y.ndim != 1 or y.shape[0] != z.shape[-2]:
        raise ValueError(f"labels must have shape ({z.shape[-2]},) (one per point of logits {z.shape}), "
                         f"got {y.shape}.")
    return _labelled(z, y, kind)


@jax.jit
def _logit_gap(z: jax.Array) -> jax.Array:
    if z.shape[-1] == 2:
        return z[..., 1] - z[..., 0]
    top2 = jax.lax.top_k(z, 2)[0]
    return top2[..., 0] - top2[..., 1]


@partial(jax.jit, static_argnums=2)
def _labelled(z: jax.Array, y: jax.Array, kind: str) -> jax.Array:
    onehot = jnp.arange(z.shape[-1])[None, :] == y[:, None]  # (n, C)
    onehot = jnp.broadcast_to(onehot, z.shape)
    true = jnp.sum(jnp.where(onehot, z, jnp.zeros((), z.dtype)), axis=-1)
    if kind == "margin":
        other = jnp.max(jnp.where(onehot, jnp.asarray(-jnp.inf, z.dtype), z), axis=-1)
        return true - other
    return true - jax.nn.logsumexp(z, axis=-1)
