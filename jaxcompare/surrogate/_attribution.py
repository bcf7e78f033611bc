"""Data attribution of kGLM predictions to training points (spec/surrogate.md, "Attribution")."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_choice, check_int, check_labels
from ._kglm import KGLM, _check_kernel_rows, _check_model, _logits

__all__ = ["Attribution", "attribute", "contributions"]

_ORDERS = ("value", "abs", "negative")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Attribution:
    """Top-k training points behind kGLM predictions (immutable pytree).

    With ``T`` test points and ``k`` kept: shapes below; with ``classes="all"`` an extra class axis follows ``T``
    (``indices (T, C, k)``, ``classes (T, C)``, ...).

    Attributes:
      indices: ``(T, k)`` training-point indices, most influential first.
      values: ``(T, k)`` their contributions ``A_c(x_t, x_i) = W[c, i] κ(x_t, x_i) + b_c / M``.
      classes: ``(T,)`` the explained class of each test point.
      logits: ``(T,)`` the explained logit, ``Σ_i A_c(x_t, x_i)`` over all ``M`` training points.
      bias_share: ``(T,)`` the intercept share ``b_c / M`` included in every contribution.
      order: ``"value"`` (largest first: the proponents), ``"abs"`` or ``"negative"`` (most negative first: the
        opponents); static.
    """

    indices: jax.Array
    values: jax.Array
    classes: jax.Array
    logits: jax.Array
    bias_share: jax.Array
    order: str = dataclasses.field(default="value", metadata=dict(static=True))


def _resolve_classes(model: KGLM, K: jax.Array, classes: Any) -> jax.Array | None:
    T = K.shape[0]
    if classes is None:
        return jnp.argmax(_logits(model.W, model.b, K), axis=1).astype(jnp.int32)
    if isinstance(classes, str):
        check_choice(classes, "classes", ("all",))
        return None
    c = jnp.asarray(classes)
    if c.ndim == 0:
        c = jnp.broadcast_to(c, (T,))
    return check_labels(c, "classes", model.n_classes, length=T)


@jax.jit
def _contrib(W, b, K, c):
    M = K.shape[1]
    return W[c] * K + (b[c] / M)[:, None]


@partial(jax.jit, static_argnames=("k", "order"))
def _top(W, b, K, c, *, k, order):
    A = _contrib(W, b, K, c)
    key = {"value": A, "abs": jnp.abs(A), "negative": -A}[order]
    _, idx = jax.lax.top_k(key, k)
    vals = jnp.take_along_axis(A, idx, axis=1)
    return idx, vals, jnp.sum(A, axis=1), b[c] / K.shape[1]


def contributions(model: KGLM, kernel_test_train: Any, classes: Any = None) -> jax.Array:
    r"""All per-training-point contributions to one logit per test point.

    ``A[t, i] = W[c_t, i] · κ(x_t, x_i) + b_{c_t} / M``, so ``Σ_i A[t, i]`` is the kGLM logit of class ``c_t`` at
    ``x_t`` (the intercept is shared equally over the ``M`` training points).

    Args:
      model: a fitted :class:`KGLM`.
      kernel_test_train: ``(T, M)`` kernel rows ``κ(x_test, X_train)``.
      classes: None (the kGLM's predicted class), an int (the same class for all) or ``(T,)`` ints.

    Returns:
      ``(T, M)`` contributions (memory: one more ``T × M`` array).
    """
    model = _check_model(model)
    K = _check_kernel_rows(model, kernel_test_train)
    c = _resolve_classes(model, K, classes)
    if c is None:
        raise ValueError("contributions takes one class per test point; call it once per class instead of 'all'.")
    return _contrib(model.W, model.b, K, c)


def attribute(
    model: KGLM, kernel_test_train: Any, *, k: int = 10, classes: Any = None, order: str = "value"
) -> Attribution:
    r"""Explain kGLM predictions by their most influential training points.

    The logit of class ``c`` at ``x`` decomposes exactly over the ``M`` training points,
    ``logit_c(x) = Σ_i A_c(x, x_i)`` with ``A_c(x, x_i) = W[c, i] κ(x, x_i) + b_c / M``; the top-k of ``A`` per
    test point are its proponents (``order="value"``), opponents (``"negative"``) or both (``"abs"``).

    Args:
      model: a fitted :class:`KGLM`.
      kernel_test_train: ``(T, M)`` kernel rows ``κ(x_test, X_train)``, same kernel as the fit.
      k: number of training points kept (``1 <= k <= M``).
      classes: None (explain the predicted class), an int, ``(T,)`` ints, or ``"all"`` (every class: an extra
        axis of length ``C`` after ``T`` in every field).
      order: ``"value"``, ``"abs"`` or ``"negative"``.

    Returns:
      :class:`Attribution`; ``values.sum()`` over all ``M`` points (not only the top-k) equals ``logits``.

    Example:
      >>> F = jax.random.normal(jax.random.key(0), (30, 5))     # 30 points, 5 random features
      >>> K = F @ F.T                                           # a (30, 30) linear kernel on them
      >>> y = jnp.argmax(F[:, :3], axis=1)                      # labels of 3 classes
      >>> model = jc.fit_kglm(K[:20, :20], y[:20])              # the first 20 points train
      >>> K_test_train = K[20:, :20]                            # the last 10 points are tested
      >>> top = jc.attribute(model, K_test_train, k=3)
      >>> top.indices.shape, top.values.shape                   # the 3 strongest proponents of each test point
      ((10, 3), (10, 3))
      >>> bool(jnp.all(top.values[:, :-1] >= top.values[:, 1:]))  # largest contribution first
      True
      >>> bool(jnp.all(top.classes == jnp.argmax(jc.kglm_logits(model, K_test_train), axis=1)))  # predicted class
      True
      >>> A = jc.contributions(model, K_test_train)             # all (10, 20) contributions sum to the logits
      >>> bool(jnp.allclose(A.sum(axis=1), top.logits))
      True
    """
    model = _check_model(model)
    K = _check_kernel_rows(model, kernel_test_train)
    M = K.shape[1]
    k = check_int(k, "k", min=1, max=M)
    order = check_choice(order, "order", _ORDERS)
    c = _resolve_classes(model, K, classes)
    if c is not None:
        idx, vals, logit, bias = _top(model.W, model.b, K, c, k=k, order=order)
        return Attribution(idx, vals, c, logit, bias, order)
    T, C = K.shape[0], model.n_classes
    per_class = [_top(model.W, model.b, K, jnp.full((T,), j, jnp.int32), k=k, order=order) for j in range(C)]
    idx, vals, logit, bias = (jnp.stack([p[i] for p in per_class], axis=1) for i in range(4))
    classes_all = jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32)[None, :], (T, C))
    return Attribution(idx, vals, classes_all, logit, bias, order)
