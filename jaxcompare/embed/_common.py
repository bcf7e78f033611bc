"""Small helpers shared by the embedding-microscope modules (validation of data matrices, matmul precision)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_labels
from .._precision import HIGHEST  # noqa: F401 - re-exported to the area's modules
from .._validation import at_least_float32, check_array, check_labels, is_concrete


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Matrix product at full float precision (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def check_data(X: Any, name: str = "X", *, min_samples: int = 2) -> jax.Array:
    """A finite floating ``(n, d)`` matrix with at least ``min_samples`` rows (float16/bfloat16 in float32: their
    sums of squares overflow and SVDs have no half-precision kernel)."""
    X = at_least_float32(check_array(X, name, ndim=2))
    traced_finite(X, name)
    if X.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples (rows), got shape {tuple(X.shape)}.")
    return X


def apply_checked(fn: Any, state: Any, X: Any, state_type: type, factory: str, mean_field: str) -> jax.Array:
    """Validate the input of a transform's ``apply`` and run the jitted ``fn(state, X)`` on rows.

    ``X`` is ``(m, d)`` or one sample ``(d,)`` with the feature count ``d`` seen at fit time (the length of the
    state's ``mean_field``); ``state`` must be a ``state_type`` (returned by ``factory(...).fit``).
    """
    if not isinstance(state, state_type):
        raise TypeError(
            f"state must be the {state_type.__name__} returned by {factory}(...).fit, got {type(state).__name__}."
        )
    d = getattr(state, mean_field).shape[-1]
    X = at_least_float32(check_array(X, "X", ndim=(1, 2)))
    traced_finite(X, "X")
    if X.shape[-1] != d:
        raise ValueError(
            f"X has {X.shape[-1]} features (last axis of shape {tuple(X.shape)}), but the transform was fitted "
            f"on {d} features."
        )
    return fn(state, X[None, :])[0] if X.ndim == 1 else fn(state, X)


def check_class_labels(labels: Any, n: int, n_classes: int | None, name: str = "labels") -> tuple[jax.Array, int]:
    """Integer labels of length ``n`` in ``[0, K)``; returns them and ``K`` (at least 2 classes must be present).

    ``K`` is ``n_classes`` when given, else ``max(labels) + 1`` (needs concrete labels: under ``jit`` pass
    ``n_classes``).
    """
    if labels is None:
        raise TypeError(f"{name} are required: pass one integer source label per sample (shape ({n},)).")
    traced_labels(labels, name, n_classes)
    y = check_labels(labels, name, n_classes, length=n)
    if n_classes is None:
        if not is_concrete(y):
            raise ValueError(
                f"the number of classes cannot be read from traced {name} (inside jit/vmap); pass n_classes=..."
            )
        n_classes = int(np.asarray(y).max()) + 1
    if is_concrete(y):
        present = np.unique(np.asarray(y))
        if present.size < 2:
            raise ValueError(
                f"{name} must contain at least two classes (sources) to compare, but all {n} samples have label "
                f"{int(present[0])}."
            )
        if present.size < n_classes:  # an absent class: a direction of zeros and a prior of 0 (LDA), empty folds
            absent = np.setdiff1d(np.arange(n_classes), present)
            shown = absent[:10].tolist() + (["..."] if absent.size > 10 else [])
            raise ValueError(
                f"{name} has no samples of {absent.size} of the {n_classes} classes in [0, {n_classes}) ({shown}); "
                "every class must be present: encode the labels densely, e.g. np.unique(labels, "
                "return_inverse=True)[1], or pass the n_classes that are there."
            )
    elif n_classes < 2:
        raise ValueError(f"n_classes must be >= 2 to compare sources, got {n_classes}.")
    return y, n_classes


def flip_signs(components: jax.Array) -> jax.Array:
    """Fix the sign of each row so that its entry of largest magnitude is positive (a deterministic convention)."""
    idx = jnp.argmax(jnp.abs(components), axis=1)
    pivot = jnp.take_along_axis(components, idx[:, None], axis=1)
    sign = jnp.where(pivot < 0, -1.0, 1.0).astype(components.dtype)
    return components * sign


def stratified_folds(key: jax.Array, y: jax.Array, folds: int) -> jax.Array:
    """Fold index in ``[0, folds)`` per sample: a random order, stably sorted by class, dealt round-robin.

    Every class is spread over the folds as evenly as possible (class counts differ by at most one between folds) and
    fold sizes differ by at most one. Same key, same folds; works under ``jit``.
    """
    n = y.shape[0]
    perm = jax.random.permutation(key, n)
    order = perm[jnp.argsort(y[perm], stable=True)]
    return jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32) % folds)


def wilson_interval(successes: jax.Array, n: jax.Array, level: float) -> tuple[jax.Array, jax.Array]:
    r"""Wilson score interval for a binomial proportion.

    With :math:`\hat p = c/n` and :math:`z = \Phi^{-1}(1-(1-\text{level})/2)`:
    :math:`\frac{\hat p + z^2/2n}{1+z^2/n} \pm \frac{z}{1+z^2/n}\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}`.
    """
    z = jax.scipy.special.ndtri(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / den
    half = z / den * jnp.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return jnp.clip(centre - half, 0.0, 1.0), jnp.clip(centre + half, 0.0, 1.0)
