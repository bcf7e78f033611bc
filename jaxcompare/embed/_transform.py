"""Fit/apply transform pairs (optax style) and their composition ``chain``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["Transform", "chain"]


class Transform(NamedTuple):
    """A pair of pure functions describing a fitted linear projection.

    Attributes:
      fit: ``fit(X, labels=None) -> state``; ``X`` has shape ``(n, d)``, ``labels`` shape ``(n,)`` (ignored by
        unsupervised transforms). ``state`` is an immutable pytree (a frozen dataclass or a tuple of them).
      apply: ``apply(state, X) -> Z``; ``X`` has shape ``(m, d)`` (or ``(d,)`` for one sample), ``Z`` has shape
        ``(m, k)`` (or ``(k,)``) and the dtype of ``X``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcompare import embed
      >>> X = jax.random.normal(jax.random.key(0), (100, 8))
      >>> t = embed.pca(2)
      >>> Z = t.apply(t.fit(X), X)       # (100, 2)
    """

    fit: Callable[..., Any]
    apply: Callable[[Any, jax.Array], jax.Array]

    def fit_apply(self, X: Any, labels: Any = None) -> tuple[Any, jax.Array]:
        """Fit on ``X`` and return ``(state, apply(state, X))``."""
        state = self.fit(X, labels)
        return state, self.apply(state, X)


def chain(*transforms: Transform) -> Transform:
    r"""Compose transforms: each is fitted on the output of the previous one.

    ``chain(t1, t2).fit(X, y)`` returns ``(s1, s2)`` with ``s1 = t1.fit(X, y)`` and ``s2 = t2.fit(t1.apply(s1, X), y)``;
    ``apply((s1, s2), X) = t2.apply(s2, t1.apply(s1, X))``. The typical use is PCA before LDA on wide embeddings,
    :math:`Z = W_{\mathrm{lda}}^\top P_{\mathrm{pca}}^\top (x - \mu)`, which removes the within-class covariance's
    null space before it is inverted.

    Args:
      *transforms: one or more ``Transform`` pairs.

    Returns:
      ``Transform`` whose state is the tuple of the member states.

    Example:
      >>> from jaxcompare import embed
      >>> X = jax.random.normal(jax.random.key(0), (60, 100))
      >>> labels = jnp.arange(60) % 3
      >>> t = embed.chain(embed.pca(20), embed.lda())
      >>> state = t.fit(X, labels)
      >>> [type(s).__name__ for s in state]
      ['PCAState', 'LDAState']
      >>> Z = t.apply(state, X)
      >>> Z.shape   # K - 1 = 2 discriminant coordinates
      (60, 2)
    """
    if not transforms:
        raise ValueError("chain needs at least one transform, got none.")
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"chain: argument {i} must be a Transform (e.g. embed.pca(...) or embed.lda(...)), "
                f"got {type(t).__name__}."
            )

    def fit(X: Any, labels: Any = None) -> tuple[Any, ...]:
        states = []
        Z = X
        for j, t in enumerate(transforms):
            s = t.fit(Z, labels)
            states.append(s)
            if j + 1 < len(transforms):
                Z = t.apply(s, Z)
        return tuple(states)

    def apply(state: tuple[Any, ...], X: Any) -> jax.Array:
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain.apply expects the tuple of {len(transforms)} states returned by its fit, got "
                f"{type(state).__name__}" + (f" of length {len(state)}." if isinstance(state, tuple) else ".")
            )
        Z = X
        for t, s in zip(transforms, state):
            Z = t.apply(s, Z)
        return Z

    return Transform(fit, apply)
