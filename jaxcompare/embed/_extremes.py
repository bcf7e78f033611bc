"""The samples that lie furthest along a direction (e.g. an LDA direction or a principal axis)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_array, check_flag, check_int, is_concrete
from ._common import check_data, mm

__all__ = ["Extremes", "extremes"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["top_indices", "top_scores", "bottom_indices", "bottom_scores"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Extremes:
    """Result of :func:`extremes`.

    Attributes:
      top_indices: ``(k,)`` row indices with the largest scores (furthest along ``+direction``), largest first.
      top_scores: ``(k,)`` their scores.
      bottom_indices: ``(k,)`` row indices with the smallest scores (furthest along ``-direction``), smallest first.
      bottom_scores: ``(k,)`` their scores.
    """

    top_indices: jax.Array
    top_scores: jax.Array
    bottom_indices: jax.Array
    bottom_scores: jax.Array


@partial(jax.jit, static_argnames=("k", "center"))
def _extremes(X, u, k, center):
    u = u / jnp.max(jnp.abs(u))  # first to max |u| = 1: the norm of 1e20·u overflows float32, of 1e-25·u underflows
    u = u / jnp.linalg.norm(u)
    Xc = X - jnp.mean(X, axis=0)[None, :] if center else X
    s = mm(Xc, u[:, None])[:, 0]
    top_s, top_i = jax.lax.top_k(s, k)
    neg_s, bot_i = jax.lax.top_k(-s, k)
    return Extremes(top_i, top_s, bot_i, -neg_s)


def extremes(X: Any, direction: Any, *, k: int = 10, center: bool = True) -> Extremes:
    r"""The ``k`` samples furthest along :math:`+u` and along :math:`-u`.

    Scores are the coordinates along the unit direction :math:`u = \text{direction}/\|\text{direction}\|`,
    :math:`s_i = (x_i - \bar x)^\top u` (or :math:`x_i^\top u` with ``center=False``); the result lists the
    indices of the ``k`` largest and the ``k`` smallest scores. Typical directions: an LDA direction
    (``lda_state.scalings[:, 0]``, pointing from lower to higher source index), a principal axis
    (``pca_state.components[0]``), or the difference of source means. With projected data ``Z`` (e.g. from
    ``apply``), pass an integer ``direction=j`` to rank along column ``j``.

    Args:
      X: ``(n, d)`` samples (embeddings or projected coordinates).
      direction: ``(d,)`` non-zero vector, or an integer column index ``j`` (the unit vector :math:`e_j`).
      k: number of samples per side, ``1 <= k <= n``.
      center: subtract the sample mean before scoring (does not change the ranking, only the scores).

    Returns:
      :class:`Extremes` with ``top_indices``, ``top_scores``, ``bottom_indices``, ``bottom_scores``.

    Example:
      >>> X = jax.random.normal(jax.random.key(0), (40, 8))
      >>> sources = jnp.arange(40) % 2
      >>> X = X.at[:, 0].add(2.0 * sources)   # source 1 is shifted along feature 0
      >>> st = embed.lda().fit(X, sources)
      >>> ex = embed.extremes(X, st.scalings[:, 0], k=5)
      >>> ex.top_indices.shape, ex.top_scores.shape
      ((5,), (5,))
      >>> sources[ex.top_indices].tolist()   # the most "source-1-like" samples
      [1, 1, 1, 1, 1]
      >>> sources[ex.bottom_indices].tolist()   # the most "source-0-like" samples
      [0, 0, 0, 0, 0]
    """
    X = check_data(X, "X", min_samples=1)
    n, d = X.shape
    if isinstance(direction, (int, np.integer)) and not isinstance(direction, bool):
        j = check_int(direction, "direction", min=-d, max=d - 1)
        u = jnp.zeros((d,), X.dtype).at[j].set(1.0)
    else:
        u = check_array(direction, "direction", shape=(d,))
        if is_concrete(u) and not np.any(np.asarray(u) != 0):
            raise ValueError("direction must be a non-zero vector, got all zeros.")
        u = (u / jnp.max(jnp.abs(u))).astype(X.dtype)  # scaled before the cast (300·u overflows float16's norm)
    k = check_int(k, "k", min=1, max=n)
    return _extremes(X, u, k, check_flag(center, "center"))
