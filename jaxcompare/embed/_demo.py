"""Demo data for the microscope: scikit-learn's bundled digits, embedded by a small random-feature network."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._optional import optional_import
from .._validation import check_float, check_int, check_key

__all__ = ["DemoEmbeddings", "make_demo_embeddings"]


class DemoEmbeddings(NamedTuple):
    """Demo embeddings of two sources.

    Attributes:
      embeddings: ``(2 n_per_source, dim)`` float32 embeddings.
      labels: ``(2 n_per_source,)`` int32 source (0 = ``names[0]``, 1 = ``names[1]``).
      digits: ``(2 n_per_source,)`` int32 hidden class (the digit 0-9), which PCA tends to recover.
      names: ``("original", "noised")``.
    """

    embeddings: jax.Array
    labels: jax.Array
    digits: jax.Array
    names: tuple[str, str]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    load_digits = optional_import("sklearn.datasets", purpose="make_demo_embeddings").load_digits
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int32)


@partial(jax.jit, static_argnames=("n", "dim"))
def _demo_core(key, images, n, dim, noise):
    k_perm, k_noise, k_w1, k_b1, k_w2 = jax.random.split(key, 5)
    perm = jax.random.permutation(k_perm, images.shape[0])
    xa = images[perm[:n]]
    xb = images[perm[n : 2 * n]]
    xb = jnp.clip(xb + noise * jax.random.normal(k_noise, xb.shape, jnp.float32), 0.0, 16.0)
    mean = jnp.mean(xa, axis=0)
    std = jnp.std(xa, axis=0) + 1.0
    h = 256
    w1 = jax.random.normal(k_w1, (64, h), jnp.float32) / 8.0
    b1 = jax.random.normal(k_b1, (h,), jnp.float32)
    w2 = jax.random.normal(k_w2, (h, dim), jnp.float32) / jnp.sqrt(float(h))

    def embed_fn(x):
        z = (x - mean[None, :]) / std[None, :]
        return jnp.tanh(jnp.tanh(z @ w1 + b1[None, :]) @ w2)

    return jnp.concatenate([embed_fn(xa), embed_fn(xb)], axis=0), perm


def make_demo_embeddings(key: Any, *, n_per_source: int = 400, dim: int = 64, noise: float = 1.5) -> DemoEmbeddings:
    r"""Two sources of image embeddings that differ in a known way, for demos and tests (no download).

    Images are scikit-learn's bundled 8x8 digits (1797 images, pixel values 0-16). The two sources use disjoint
    random subsets of the images: ``"original"`` as they are, ``"noised"`` with i.i.d. Gaussian pixel noise of
    standard deviation ``noise`` (clipped to [0, 16]). Both are embedded by the same fixed random two-layer network
    (a random-feature embedder; weights drawn from ``key``), after standardising pixels with statistics fitted on the
    original images:

    .. math:: e(x) = \tanh\!\big(W_2 \tanh(W_1 \tilde x + b_1)/\sqrt{h}\big), \quad
              W_1 \in \mathbb{R}^{h\times 64},\ W_2 \in \mathbb{R}^{\text{dim}\times h},\ h = 256,

    with standard normal :math:`W_1/\sqrt{64}, W_2, b_1`. ``noise=0`` gives two samples of the same distribution
    (a null case). The leading principal components follow the digit identity (``digits``), while the source
    difference shows up in LDA.

    Args:
      key: PRNG key (subsets, noise, network weights).
      n_per_source: samples per source, ``1 <= n_per_source <= 898``.
      dim: embedding dimension.
      noise: pixel noise standard deviation of the second source, ``>= 0``.

    Returns:
      :class:`DemoEmbeddings` ``(embeddings, labels, digits, names)``.

    Example:
      >>> demo = embed.make_demo_embeddings(jax.random.key(0), n_per_source=100, dim=16)
      >>> demo.embeddings.shape, demo.embeddings.dtype, demo.names
      ((200, 16), dtype('float32'), ('original', 'noised'))
      >>> res = embed.separability(jax.random.key(1), demo.embeddings, demo.labels)
      >>> bool(res.accuracy > res.chance)   # the noised images are told apart better than chance (0.5)
      True
    """
    key = check_key(key)
    n_per_source = check_int(n_per_source, "n_per_source", min=1, max=898)
    dim = check_int(dim, "dim", min=1)
    check_float(noise, "noise", low=0.0)
    images, digits = _load_digits()
    E, perm = _demo_core(key, jnp.asarray(images), n_per_source, dim, noise)
    perm = np.asarray(perm)
    labels = jnp.concatenate([jnp.zeros(n_per_source, jnp.int32), jnp.ones(n_per_source, jnp.int32)])
    dig = jnp.asarray(digits[perm[: 2 * n_per_source]])
    return DemoEmbeddings(E, labels, dig, ("original", "noised"))
