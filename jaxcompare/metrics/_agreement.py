"""Accuracy and churn: agreement of hard labels with the truth and with each other."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._checked import traced_finite, traced_labels
from .._validation import check_array, check_labels, check_same_length
from ._labels import _float_dtype, as_input, hard_labels

__all__ = ["accuracy", "churn", "pairwise_churn"]


def accuracy(pred: Any, labels: Any) -> jax.Array:
    """Fraction of points whose predicted label equals the true label.

    ``acc = (1/n) * sum_i [yhat_i == y_i]`` with ``yhat = argmax`` of ``(n, C)`` scores, or ``pred`` itself when it
    holds ``(n,)`` integer labels (for binary logit gaps ``s`` pass ``s > 0``).

    Args:
      pred: ``(n, C)`` scores/probabilities or ``(n,)`` integer labels.
      labels: ``(n,)`` true labels in ``[0, C)``.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` (the floating dtype of ``pred``, else the default float).

    Example:
      >>> import jax.numpy as jnp
      >>> float(accuracy(jnp.array([[0.2, 0.8], [0.6, 0.4]]), jnp.array([1, 1])))
      0.5
    """
    p = as_input(pred, "pred")
    n_classes = p.shape[1] if p.ndim == 2 else None
    yhat = hard_labels(p, "pred", n_classes)
    traced_labels(labels, "labels", n_classes)
    y = check_labels(labels, "labels", n_classes)
    check_same_length({"pred": yhat, "labels": y})
    return jnp.mean(yhat == y, dtype=_float_dtype(p))


def churn(a: Any, b: Any) -> jax.Array:
    """Churn: the fraction of points on which two models' hard labels differ.

    ``churn(f, g) = (1/n) * sum_i [yhat_f(x_i) != yhat_g(x_i)]``. Against an ensemble, pass its label as ``b``:
    ``churn(pred, ensemble_label(ensemble_scores))``.

    Args:
      a: ``(n, C)`` scores or ``(n,)`` integer labels of the first model.
      b: the same for the second model (or the ensemble's ``(n,)`` labels); scores of both models must have the same
        ``C``, and labels must lie in ``[0, C)`` when the other model gives ``C`` scores.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(churn(jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 0, 0])))
      0.25
    """
    pa, pb = as_input(a, "a"), as_input(b, "b")
    ca = pa.shape[1] if pa.ndim == 2 else None
    cb = pb.shape[1] if pb.ndim == 2 else None
    if ca is not None and cb is not None and ca != cb:
        raise ValueError(
            f"a and b must score the same classes: a has {ca} columns (shape {pa.shape}) but b has {cb} "
            f"(shape {pb.shape})."
        )
    classes = ca if ca is not None else cb  # integer labels are checked against the other model's classes
    la, lb = hard_labels(pa, "a", classes), hard_labels(pb, "b", classes)
    check_same_length({"a": la, "b": lb})
    return jnp.mean(la != lb, dtype=_float_dtype(pa, pb))


def pairwise_churn(preds: Any) -> jax.Array:
    """Churn between every pair of ``K`` models.

    Args:
      preds: ``(K, n)`` integer labels or ``(K, n, C)`` scores of ``K`` models on the same ``n`` points.

    Returns:
      ``(K, K)`` symmetric matrix with zero diagonal, entry ``[i, j] = churn(preds[i], preds[j])``.

    Example:
      >>> import jax.numpy as jnp
      >>> pairwise_churn(jnp.array([[0, 1], [1, 1]])).tolist()
      [[0.0, 0.5], [0.5, 0.0]]
    """
    p = as_input(preds, "preds")
    if p.ndim == 3:
        p = check_array(p, "preds", ndim=3)
        traced_finite(p, "preds")
        lab = jnp.argmax(p, axis=-1)
    elif p.ndim == 2 and not jnp.issubdtype(p.dtype, jnp.floating):
        traced_labels(p, "preds", None)
        lab = check_labels(p.reshape(-1), "preds").reshape(p.shape)
    else:
        raise ValueError(
            f"preds must be (K, n) integer labels or (K, n, C) scores, got shape {p.shape} and dtype {p.dtype}; "
            "for binary logit gaps s of shape (K, n) pass `s > 0`."
        )
    dtype = _float_dtype(p)
    return jax.lax.map(lambda li: jnp.mean(li[None, :] != lab, axis=1, dtype=dtype), lab)
