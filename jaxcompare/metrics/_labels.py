"""Hard labels from predictions, binary logit gaps as probabilities, and the ensemble's label."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_labels
from .._validation import at_least_float32, check_array, check_labels, is_concrete

__all__ = ["hard_labels", "binary_probs", "ensemble_label"]


def _float_dtype(*arrays: Any) -> Any:
    """Floating result dtype: the inputs' floating dtype if any (at least float32: float16 counts stop at 2048 and
    a mean over 70 000 points overflowed), else the default float."""
    floats = [a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
    dt = jnp.result_type(*floats) if floats else jnp.result_type(float)
    return jax.dtypes.canonicalize_dtype(jnp.promote_types(dt, jnp.float32))


def as_input(x: Any, name: str) -> Any:
    """``x`` as given when it is a ``jax.Array``, else as a NumPy array in its own dtype, checked to hold numbers: not
    yet in JAX, where int64 labels beyond int32 wrap (``2**32`` read as 0) before any check sees them."""
    if isinstance(x, jax.Array):
        return x
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged lists
        raise TypeError(f"{name} must be an array of scores or labels, got {type(x).__name__}: {e}") from None
    if a.dtype.kind not in "biuf" and a.dtype.name != "bfloat16":
        raise TypeError(
            f"{name} must hold numbers (scores or integer labels), got dtype {a.dtype}"
            + (" (strings: encode the labels as integers first)." if a.dtype.kind in "US" else f" ({x!r}).")
        )
    return a


def hard_labels(pred: Any, name: str = "pred", n_classes: int | None = None) -> jax.Array:
    """Hard class labels from predictions.

    Args:
      pred: ``(n, C)`` scores, logits or probabilities (the label is the argmax, first index on ties), or ``(n,)``
        integer/bool labels. A 1-D *floating* array is rejected because it is ambiguous: for binary logit gaps
        ``s = l1 - l0`` pass ``s > 0`` (labels) or ``binary_probs(s)`` (``(n, 2)`` probabilities).
      name: argument name for error messages.
      n_classes: when given, labels must lie in ``[0, n_classes)``.

    Returns:
      ``(n,)`` int labels.

    Example:
      >>> import jax.numpy as jnp
      >>> hard_labels(jnp.array([[0.1, 0.9], [0.8, 0.2]])).tolist()
      [1, 0]
    """
    a = as_input(pred, name)
    if isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "biu":  # checked in its own dtype
        return check_labels(a, name, n_classes)
    a = jnp.asarray(a)
    if a.ndim == 2:
        a = check_array(a, name, ndim=2)
        traced_finite(a, name)
        if n_classes is not None and a.shape[1] != n_classes:
            raise ValueError(f"{name} must have {n_classes} columns (one per class), got shape {a.shape}.")
        return jnp.argmax(a, axis=1).astype(jnp.int32)
    if a.ndim == 1:
        if jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(
                f"{name} is a 1-D floating array; pass integer labels, (n, C) scores, or for binary logit gaps "
                f"s = l1 - l0 use `s > 0` (labels) or `jaxcompare.metrics.binary_probs(s)`."
            )
        traced_labels(a, name, n_classes)
        return check_labels(a, name, n_classes)
    raise ValueError(f"{name} must be (n, C) scores or (n,) integer labels, got shape {a.shape}.")


def binary_probs(gap: Any) -> jax.Array:
    """Two-class probabilities from logit gaps: ``p = [sigmoid(-s), sigmoid(s)]`` with ``s = l1 - l0``.

    This is the softmax of the logits ``(l0, l1)`` (it only depends on their difference), so
    ``ece(binary_probs(s), y)`` is the ECE of a binary model and ``hard_labels(binary_probs(s)) == (s > 0)``.

    Args:
      gap: ``(n,)`` logit gaps (any leading batch shape ``(..., n)`` works too).

    Returns:
      ``(..., 2)`` probabilities in the dtype of ``gap``.

    Example:
      >>> import jax.numpy as jnp
      >>> binary_probs(jnp.array([0.0]))[0].tolist()
      [0.5, 0.5]
    """
    s = check_array(gap, "gap", min_size=1)
    traced_finite(s, "gap")
    p1 = jax.nn.sigmoid(s)
    p0 = jax.nn.sigmoid(-s)
    return jnp.stack([p0, p1], axis=-1)


def ensemble_label(scores: Any) -> jax.Array:
    """The ensemble's hard label: sign of the mean logit gap, argmax of the mean probabilities, or majority vote.

    Args:
      scores: ``(K, n)`` binary logit gaps of ``K`` models (label ``1`` where the mean gap is ``> 0``),
        ``(K, n, C)`` class probabilities (label = argmax of the mean over models), or ``(K, n)`` integer/bool
        labels of ``K`` models (the most frequent label of each point; ties go to the smallest label; concrete
        labels only).

    Returns:
      ``(n,)`` int labels.

    Example:
      >>> import jax.numpy as jnp
      >>> ensemble_label(jnp.array([[1.0, -2.0], [-0.5, -1.0]])).tolist()
      [1, 0]
    """
    votes = scores if isinstance(scores, jax.Array) else np.asarray(scores)
    if votes.ndim == 2 and (jnp.issubdtype(votes.dtype, jnp.integer) or jnp.issubdtype(votes.dtype, jnp.bool_)):
        return _majority(votes)
    s = check_array(scores, "scores", ndim=(2, 3))
    traced_finite(s, "scores")
    mean = jnp.mean(at_least_float32(s), axis=0)
    if s.ndim == 2:
        return (mean > 0).astype(jnp.int32)
    return jnp.argmax(mean, axis=-1).astype(jnp.int32)


def _majority(votes: Any) -> jax.Array:
    """The most frequent label of each column of ``(K, n)`` integer/bool labels (ties: the smallest label)."""
    if not is_concrete(votes):
        raise TypeError(
            "ensemble_label of traced integer labels (a majority vote) needs their number of classes, which jit "
            "hides; call it outside jit, or pass (K, n, C) one-hot votes (jax.nn.one_hot) as probabilities."
        )
    y = check_labels(votes.reshape(-1), "scores (integer labels of K models)")
    counts = jnp.sum(jax.nn.one_hot(y.reshape(votes.shape), int(jnp.max(y)) + 1, dtype=jnp.int32), axis=0)
    return jnp.argmax(counts, axis=-1).astype(jnp.int32)
