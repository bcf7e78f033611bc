"""Principal component analysis as a fit/apply transform pair."""

from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import REQUIRED, check_choice, check_int, check_key
from ._common import apply_checked, check_data, flip_signs, mm
from ._svd import _randomized_svd
from ._transform import Transform

__all__ = ["PCAState", "pca"]

_METHODS = ("auto", "full", "covariance", "randomized")


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["mean", "components", "explained_variance", "explained_variance_ratio", "singular_values"],
    meta_fields=["method"],
)
@dataclasses.dataclass(frozen=True)
class PCAState:
    """Fitted PCA.

    Attributes:
      mean: ``(d,)`` feature means of the training data.
      components: ``(k, d)`` orthonormal principal axes (rows), by decreasing variance; each row's entry of largest
        magnitude is positive.
      explained_variance: ``(k,)`` variance along each axis, :math:`s_i^2/(n-1)`.
      explained_variance_ratio: ``(k,)`` fraction of the total variance :math:`\\sum_j \\operatorname{Var}(x_j)`.
      singular_values: ``(k,)`` singular values :math:`s_i` of the centred data.
      method: the SVD method that was used (``"full"``, ``"covariance"`` or ``"randomized"``).
    """

    mean: jax.Array
    components: jax.Array
    explained_variance: jax.Array
    explained_variance_ratio: jax.Array
    singular_values: jax.Array
    method: str = "full"


def _resolve_method(method: str, n: int, d: int, k: int, has_key: bool) -> str:
    if method != "auto":
        return method
    r = min(n, d)
    if has_key and r > 500 and 5 * k <= r:
        return "randomized"
    if max(n, d) >= 4 * r:
        return "covariance"
    return "full"


@partial(jax.jit, static_argnames=("k", "method", "n_oversamples", "n_iter"))
def _fit_pca(X, key, k, method, n_oversamples, n_iter):
    n, d = X.shape
    mean = jnp.mean(X, axis=0)
    Xc = X - mean[None, :]
    total_var = jnp.sum(Xc * Xc) / (n - 1)
    if method == "full":
        _, s, Vt = jnp.linalg.svd(Xc, full_matrices=False)
        s, Vt = s[:k], Vt[:k]
    elif method == "covariance":
        if d <= n:
            w, V = jnp.linalg.eigh(mm(Xc.T, Xc))
            w, Vt = w[::-1][:k], V[:, ::-1][:, :k].T
            s = jnp.sqrt(jnp.maximum(w, 0.0))
        else:  # Gram trick: eigenvectors of Xc Xc^T map to right singular vectors
            w, U = jnp.linalg.eigh(mm(Xc, Xc.T))
            w, U = w[::-1][:k], U[:, ::-1][:, :k]
            s = jnp.sqrt(jnp.maximum(w, 0.0))
            Vt = mm(U.T, Xc) / jnp.where(s > 0, s, 1.0)[:, None]
            # a direction of zero variance (k = n: centring leaves rank n - 1) maps to a zero row; a Householder QR
            # completes the rows to an orthonormal set (resolved rows are kept up to sign, fixed below)
            Q, R = jnp.linalg.qr(Vt.T)
            Vt = (Q * jnp.where(jnp.diagonal(R) < 0, -1.0, 1.0).astype(Q.dtype)[None, :]).T
    else:
        _, s, Vt = _randomized_svd(key, Xc, k, n_oversamples, n_iter)
    ev = s * s / (n - 1)
    ratio = ev / jnp.where(total_var > 0, total_var, 1.0)
    return PCAState(mean, flip_signs(Vt), ev, ratio, s, method)


@jax.jit
def _apply_pca(state: PCAState, X: jax.Array) -> jax.Array:
    dtype = jnp.result_type(X.dtype, state.mean.dtype)
    Xc = X.astype(dtype) - state.mean.astype(dtype)[None, :]
    return mm(Xc, state.components.astype(dtype).T)


def pca(
    key: Any = REQUIRED,
    n_components: Any = REQUIRED,
    /,
    *,
    method: str = "auto",
    n_oversamples: int = 10,
    n_iter: int = 7,
    **deprecated: Any,
) -> Transform:
    r"""Principal component analysis as a ``Transform(fit, apply)`` pair.

    ``fit(X, labels=None)`` centres :math:`X \in \mathbb{R}^{n\times d}` at its mean :math:`\mu` and keeps the top
    :math:`k` right singular vectors :math:`V_k` of :math:`X_c = X - \mathbf{1}\mu^\top`;
    ``apply(state, X) = (X - \mu) V_k`` (shape ``(m, k)``). Labels are ignored, so ``pca`` composes with ``lda``
    in ``chain``. Explained variances are :math:`s_i^2/(n-1)` as in scikit-learn.

    Methods:
      * ``"full"``: exact thin SVD of :math:`X_c` (LAPACK gesdd on CPU).
      * ``"covariance"``: eigendecomposition of the :math:`\min(n,d)`-sized Gram matrix :math:`X_c^\top X_c` (or
        :math:`X_cX_c^\top`), formed at ``precision=HIGHEST``; fastest for tall or wide matrices, but squares the
        condition number, so components with variance below about :math:`\epsilon \lambda_1` (float32:
        :math:`10^{-7}\lambda_1`) are not resolved. Components of zero variance (e.g. the :math:`n`-th one of
        :math:`n \le d` centred samples) are completed to an orthonormal set, as ``"full"`` does.
      * ``"randomized"``: randomized SVD (:func:`randomized_svd`, Halko et al. 2011) with ``n_iter`` power iterations
        and ``n_oversamples`` extra columns; needs ``key``. :math:`O(n d k)` instead of :math:`O(n d \min(n, d))`.
      * ``"auto"`` (default): ``"randomized"`` when a ``key`` is given, :math:`\min(n,d) > 500` and
        :math:`5k \le \min(n,d)`; else ``"covariance"`` when :math:`\max(n,d) \ge 4\min(n,d)`; else ``"full"``.
        Without a key ``"auto"`` never chooses the randomized method (no hidden randomness).

    Signs are fixed so that each component's largest-magnitude entry is positive. The dtype of ``X`` is kept.
    ``fit`` and ``apply`` work under ``jit`` and ``vmap`` (value checks such as NaN detection run eagerly, and under
    ``jit`` inside :func:`jaxcompare.checked`).
    Memory: one centred copy of ``X``.

    Call as ``pca(key, n_components)`` or, without randomness, ``pca(n_components)`` (``pca(None, k)`` is the
    same). ``pca(k, key=key)`` still works for one release, with a ``DeprecationWarning``.

    Args:
      key: PRNG key for ``"randomized"`` (required there, optional for ``"auto"``); the first positional argument.
      n_components: number of components :math:`k`, ``1 <= k <= min(n, d)`` (checked at fit).
      method: ``"auto"``, ``"full"``, ``"covariance"`` or ``"randomized"``.
      n_oversamples: randomized SVD oversampling.
      n_iter: randomized SVD power iterations.

    Returns:
      ``Transform`` with ``fit(X, labels=None) -> PCAState`` and ``apply(state, X) -> Z``.

    Example:
      >>> from jaxcompare import embed
      >>> X = jax.random.normal(jax.random.key(0), (50, 6)) * jnp.array([5.0, 2.0, 1.0, 1.0, 1.0, 1.0])[None, :]
      >>> t = embed.pca(2)                 # deterministic; pca(key, 2) allows the randomized method
      >>> state = t.fit(X)
      >>> Z = t.apply(state, X)      # (n, 2) coordinates to scatter
      >>> Z.shape
      (50, 2)
      >>> jnp.argmax(jnp.abs(state.components), axis=1).tolist()   # PC1, PC2 follow the two stretched features
      [0, 1]
      >>> bool(state.explained_variance_ratio[0] > 0.5)   # PC1 carries most of the variance
      True
    """
    key, n_components = _pca_args(key, n_components, deprecated)
    n_components = check_int(n_components, "n_components", min=1)
    check_choice(method, "method", _METHODS)
    n_oversamples = check_int(n_oversamples, "n_oversamples", min=0)
    n_iter = check_int(n_iter, "n_iter", min=0)
    if key is not None:
        key = check_key(key)
    elif method == "randomized":
        raise TypeError(
            "method='randomized' needs an explicit PRNG key: pca(jax.random.key(0), k, method='randomized')."
        )

    def fit(X: Any, labels: Any = None) -> PCAState:
        X = check_data(X, "X")
        n, d = X.shape
        if n_components > min(n, d):
            raise ValueError(
                f"n_components={n_components} exceeds min(n_samples, n_features) = min({n}, {d}) = {min(n, d)}."
            )
        m = _resolve_method(method, n, d, n_components, key is not None)
        return _fit_pca(X, key, n_components, m, n_oversamples, n_iter)

    def apply(state: PCAState, X: Any) -> jax.Array:
        return apply_checked(_apply_pca, state, X, PCAState, "pca", "mean")

    return Transform(fit, apply)


def _pca_args(key: Any, n_components: Any, deprecated: dict) -> tuple[Any, Any]:
    """``pca(key, k)``, ``pca(k)`` (no key) or the deprecated ``pca(k, key=key)`` / ``pca(n_components=k)``."""
    unknown = sorted(set(deprecated) - {"key", "n_components"})
    if unknown:
        raise TypeError(f"pca() got an unexpected keyword argument {unknown[0]!r}.")
    if deprecated:
        given = [a for a in (key, n_components) if a is not REQUIRED]
        if "key" in deprecated and (len(given) == 2 or (given and "n_components" in deprecated)):
            raise TypeError(
                "pca() got the PRNG key twice: pass it only as the first positional argument, "
                "pca(key, n_components, ...)."
            )
        if "n_components" in deprecated and len(given) == 2:
            raise TypeError("pca() got multiple values for argument 'n_components'.")
        warnings.warn(
            f"pca() with {', '.join(sorted(deprecated))} passed by keyword is deprecated and will be removed "
            "in the next release: pass the key as the first positional argument, pca(key, n_components, "
            "...), or pca(n_components) without a key.",
            DeprecationWarning,
            stacklevel=3,
        )
        k = deprecated.get("key")
        n = deprecated["n_components"] if "n_components" in deprecated else (given[0] if given else REQUIRED)
        if "n_components" in deprecated and given:  # pca(key, n_components=k)
            k = given[0]
        if n is REQUIRED:
            raise TypeError(
                "pca() missing required argument n_components: pca(key, n_components) or pca(n_components)."
            )
        return k, n
    if key is REQUIRED:
        raise TypeError("pca() missing required argument n_components: pca(key, n_components) or pca(n_components).")
    if n_components is REQUIRED:  # pca(k): no key
        return None, key
    return key, n_components
