"""Linear discriminant analysis (Fisher) as a fit/apply transform pair, with shrinkage for wide data."""

from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_result
from .._results import Result, report_result
from .._validation import check_float, check_int, is_concrete
from ._common import apply_checked, check_class_labels, check_data, mm
from ._transform import Transform

__all__ = ["LDAState", "lda"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "xbar",
        "scalings",
        "explained_variance_ratio",
        "means",
        "priors",
        "coef",
        "intercept",
        "shrinkage",
        "result",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class LDAState:
    """Fitted LDA.

    Attributes:
      xbar: ``(d,)`` prior-weighted mean of the class means (the overall mean).
      scalings: ``(d, k)`` discriminant directions :math:`v_j`, normalised so that :math:`v_j^\\top S_w v_j = 1`
        (within-class variance one along each direction); oriented so that higher class indices project higher.
      explained_variance_ratio: ``(k,)`` share :math:`\\lambda_j/\\sum_i \\lambda_i` of the between-class variance.
      means: ``(K, d)`` class means.
      priors: ``(K,)`` class proportions.
      coef: ``(K, d)`` linear discriminant weights :math:`S_w^{-1}(\\mu_c - \\bar x)`.
      intercept: ``(K,)`` so that ``argmax((x - xbar) @ coef.T + intercept)`` is the Bayes rule under shared
        Gaussian class covariances.
      shrinkage: ``()`` shrinkage intensity :math:`\\alpha` that was used (0 without regularisation).
      result: ``()`` int32 :class:`jaxcompare.Result` code: ``successful``, or ``singular`` when the within-class
        covariance stays singular even after shrinkage (no within-class scatter); the state then holds a
        nearest-class-mean rule in the Euclidean metric (:math:`S_w` replaced by :math:`\\mu I`), never NaN.
    """

    xbar: jax.Array
    scalings: jax.Array
    explained_variance_ratio: jax.Array
    means: jax.Array
    priors: jax.Array
    coef: jax.Array
    intercept: jax.Array
    shrinkage: jax.Array
    result: jax.Array | None = None


def _ledoit_wolf(R: jax.Array, w: jax.Array, S: jax.Array, ntot: jax.Array) -> jax.Array:
    """Ledoit-Wolf intensity for centred rows ``R`` (weights ``w``) with covariance ``S = R^T diag(w) R / ntot``."""
    p = S.shape[0]
    tr = jnp.trace(S)
    mu = tr / p
    sq = jnp.sum(R * R, axis=1)
    beta_ = jnp.sum(w * sq * sq) / ntot
    delta_ = jnp.sum(S * S)
    beta = (beta_ - delta_) / (p * ntot)
    delta = (delta_ - 2.0 * mu * tr + p * mu * mu) / p
    beta = jnp.minimum(beta, delta)
    return jnp.clip(jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0), 0.0, 1.0)


@partial(jax.jit, static_argnames=("n_classes", "k", "mode"))
def _fit_lda(X, y, w, alpha, n_classes, k, mode):
    """Weighted LDA fit. ``w`` are 0/1 sample weights (cross-validation masks); ``mode`` is none/auto/fixed."""
    n, d = X.shape
    dtype = X.dtype
    eps = jnp.finfo(dtype).eps
    w = w.astype(dtype)
    onehot = jax.nn.one_hot(y, n_classes, dtype=dtype) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    ntot = jnp.sum(counts)
    priors = counts / ntot
    means = mm(onehot.T, X) / jnp.maximum(counts, 1.0)[:, None]
    xbar = mm(priors[None, :], means)[0]
    R = X - means[y]
    Sw = mm((R * w[:, None]).T, R) / ntot
    mu = jnp.trace(Sw) / d
    eye = jnp.eye(d, dtype=dtype)
    D = means - xbar[None, :]  # (K, d)
    # scale of the total covariance, the reference for "numerically singular"
    scale = jnp.max(jnp.diagonal(Sw) + jnp.sum(priors[:, None] * D * D, axis=0))
    tol = d * eps * scale

    def shrunk(a):
        return (1.0 - a) * Sw + (a * mu) * eye

    def singular(L):
        return ~jnp.all(jnp.isfinite(L)) | (jnp.min(jnp.diagonal(L)) ** 2 <= tol)

    if mode == "fixed":
        a = jnp.asarray(alpha, dtype)
        L = jnp.linalg.cholesky(shrunk(a))
    elif mode == "auto":
        a = _ledoit_wolf(R, w, Sw, ntot).astype(dtype)
        L = jnp.linalg.cholesky(shrunk(a))
    else:  # no shrinkage unless the within-class covariance is numerically singular
        L0 = jnp.linalg.cholesky(Sw)
        bad = singular(L0)
        a = jnp.where(bad, _ledoit_wolf(R, w, Sw, ntot), 0.0).astype(dtype)
        L = jax.lax.cond(bad, lambda: jnp.linalg.cholesky(shrunk(a)), lambda: L0)
    # still singular (e.g. no within-class scatter): report it and fall back to the scaled identity (a
    # nearest-class-mean rule) so that the state stays finite
    bad = singular(L)
    fallback = jnp.where(mu > 0, mu, jnp.where(scale > 0, scale, 1.0))
    L = jnp.where(bad, jnp.sqrt(fallback) * eye, L)
    result = jnp.where(bad, int(Result.singular), int(Result.successful)).astype(jnp.int32)

    Bt = jnp.sqrt(priors)[:, None] * D  # rows of B^T, Sb = B B^T
    solve_l = partial(jax.scipy.linalg.solve_triangular, L, lower=True)
    solve_lt = partial(jax.scipy.linalg.solve_triangular, L.T, lower=False)
    C = solve_l(Bt.T)  # L^{-1} B, (d, K)
    M = mm(C.T, C)  # B^T Sw^{-1} B, (K, K)
    lam, U = jnp.linalg.eigh(M)
    lam, U = lam[::-1], U[:, ::-1]
    lam = jnp.maximum(lam, 0.0)
    keep = lam > jnp.max(lam) * n_classes * eps * 10
    V = solve_lt(mm(C, U)) / jnp.where(keep, jnp.sqrt(jnp.where(keep, lam, 1.0)), 1.0)[None, :]
    V = jnp.where(keep[None, :], V, 0.0)[:, :k]
    ratio = (lam / jnp.where(jnp.sum(lam) > 0, jnp.sum(lam), 1.0))[:k]
    # orientation: the index-weighted class means increase along every direction
    proj = mm(D, V)  # (K, k)
    idx = jnp.arange(n_classes, dtype=dtype)
    s = mm((idx * priors)[None, :], proj)[0]
    V = V * jnp.where(s < 0, -1.0, 1.0).astype(dtype)[None, :]
    # Bayes rule: coef_c = Sw^{-1}(mu_c - xbar), intercept_c = -1/2 (mu_c - xbar)^T Sw^{-1} (mu_c - xbar) + log p_c
    A = solve_l(D.T)  # (d, K)
    coef = solve_lt(A).T
    logp = jnp.where(priors > 0, jnp.log(jnp.where(priors > 0, priors, 1.0)), -jnp.inf)
    intercept = -0.5 * jnp.sum(A * A, axis=0) + logp
    return LDAState(xbar, V, ratio, means, priors, coef, intercept, a, result)


@jax.jit
def _apply_lda(state: LDAState, X: jax.Array) -> jax.Array:
    dtype = jnp.result_type(X.dtype, state.xbar.dtype)
    return mm(X.astype(dtype) - state.xbar.astype(dtype)[None, :], state.scalings.astype(dtype))


@jax.jit
def _predict_lda(state: LDAState, X: jax.Array) -> jax.Array:
    scores = mm(X - state.xbar[None, :], state.coef.T) + state.intercept[None, :]
    return jnp.argmax(scores, axis=-1)


def _shrinkage_mode(shrinkage: Any) -> tuple[str, float]:
    if shrinkage is None:
        return "none", 0.0
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be None, 'auto' or a number in [0, 1], got {shrinkage!r}.")
        return "auto", 0.0
    check_float(shrinkage, "shrinkage", low=0.0, high=1.0)
    return "fixed", shrinkage


def _singular_warning(d: int, n: int, n_classes: int) -> None:
    warnings.warn(
        f"LDA: {d} features but only {n} samples in {n_classes} classes, so the within-class covariance "
        f"(rank <= n - K = {n - n_classes}) is singular; regularising with Ledoit-Wolf shrinkage "
        f"(shrinkage='auto'). Pass shrinkage=... explicitly (or reduce dimension with chain(pca(m), lda())) "
        f"to silence this warning.",
        UserWarning,
        stacklevel=3,
    )


def lda(
    n_components: int | None = None, *, shrinkage: Any = None, n_classes: int | None = None, throw: bool = True
) -> Transform:
    r"""Fisher linear discriminant analysis as a ``Transform(fit, apply)`` pair (labels required at fit).

    With class means :math:`\mu_c`, proportions :math:`p_c`, overall mean :math:`\bar x = \sum_c p_c\mu_c`, pooled
    within-class covariance :math:`S_w = \frac1n\sum_i (x_i-\mu_{y_i})(x_i-\mu_{y_i})^\top` and between-class
    covariance :math:`S_b = \sum_c p_c(\mu_c-\bar x)(\mu_c-\bar x)^\top`, the directions solve
    :math:`S_b v = \lambda S_w v` with :math:`v^\top S_w v = 1`, by decreasing :math:`\lambda`; at most
    :math:`K-1` are non-zero. ``apply(state, X) = (X - \bar x) V`` (shape ``(m, k)``). Because :math:`S_b` has rank
    :math:`< K`, the eigenproblem is reduced to the :math:`K\times K` matrix :math:`B^\top S_w^{-1}B` (one Cholesky
    factorisation of :math:`S_w`, :math:`O(nd^2 + d^3)`).

    Shrinkage (regularised LDA, Friedman 1989): :math:`S_w \leftarrow (1-\alpha)S_w + \alpha\frac{\operatorname{tr}
    S_w}{d} I`, with ``shrinkage=alpha`` fixed or ``"auto"`` for the Ledoit-Wolf (2004) intensity estimated from the
    within-class residuals. Unlike scikit-learn's ``solver="eigen"``, only :math:`S_w` is shrunk (:math:`S_b` stays
    the between-class matrix); without shrinkage the directions equal scikit-learn's up to sign and scale.

    More dimensions than samples: with ``shrinkage=None`` and :math:`d > n - K` the within-class covariance is
    singular; ``fit`` then warns and uses ``"auto"`` shrinkage. If :math:`S_w` is numerically singular for another
    reason (collinear features) the same fallback happens inside the computation, also under ``jit``; the
    intensity used is ``state.shrinkage`` (eager fits warn when it is non-zero).

    Args:
      n_components: number of directions :math:`k \le K-1` (default :math:`\min(K-1, d)`).
      shrinkage: ``None`` (default), ``"auto"`` or a float in ``[0, 1]``.
      n_classes: number of classes :math:`K`; default ``max(labels) + 1`` (needed under ``jit``/``vmap``).
      throw: ``fit`` raises ``ValueError`` when the fit is singular (``state.result == Result.singular``);
        ``False`` warns with :class:`jaxcompare.SolverWarning` and returns the flagged state (the package-wide
        convention, :class:`jaxcompare.Result`). Under ``jit`` the ``result`` field is the report.

    Returns:
      ``Transform`` with ``fit(X, labels) -> LDAState`` and ``apply(state, X) -> Z``.

    Example:
      >>> from jaxcompare import embed
      >>> X = jax.random.normal(jax.random.key(0), (60, 100))   # wide: more features than samples
      >>> sources = jnp.arange(60) % 3
      >>> X = X.at[:, 0].add(3.0 * sources)   # the sources differ along feature 0
      >>> t = embed.chain(embed.pca(20), embed.lda())
      >>> state = t.fit(X, sources)
      >>> Z = t.apply(state, X)   # (n, K-1) discriminant coordinates
      >>> Z.shape
      (60, 2)
      >>> type(state[1]).__name__, state[1].scalings.shape
      ('LDAState', (20, 2))

    References:
      R. A. Fisher (1936); J. H. Friedman, "Regularized discriminant analysis", JASA 84 (1989);
      O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivar.
      Anal. 88 (2004).
    """
    if n_components is not None:
        n_components = check_int(n_components, "n_components", min=1)
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", min=2)
    mode, alpha = _shrinkage_mode(shrinkage)
    if not isinstance(throw, (bool, np.bool_)):
        raise TypeError(f"throw must be True or False, got {throw!r}.")

    def fit(X: Any, labels: Any = None) -> LDAState:
        return _fit_checked(X, labels, n_components, n_classes, mode, alpha, bool(throw))

    def apply(state: LDAState, X: Any) -> jax.Array:
        return apply_checked(_apply_lda, state, X, LDAState, "lda", "xbar")

    return Transform(fit, apply)


SINGULAR_MESSAGE = (
    "the within-class covariance is singular even after shrinkage (samples equal to their class means, or "
    "shrinkage=0 with more features than samples or constant features); pass shrinkage='auto' or a positive value, "
    "or remove constant features."
)


def _fit_checked(X, labels, n_components, n_classes, mode, alpha, throw=True) -> LDAState:
    """Validate, fit, and report regularisation or failure (eagerly)."""
    X = check_data(X, "X")
    n, d = X.shape
    y, K = check_class_labels(labels, n, n_classes)
    k = min(K - 1, d) if n_components is None else n_components
    if k > min(K - 1, d):
        raise ValueError(
            f"n_components={k} is too large: LDA yields at most min(n_classes - 1, n_features) = "
            f"min({K - 1}, {d}) = {min(K - 1, d)} directions."
        )
    if mode == "none" and d > n - K:
        _singular_warning(d, n, K)
        mode = "auto"
    state = _fit_lda(X, y, jnp.ones((n,), X.dtype), alpha, K, k, mode)
    traced_result(state.result, throw, "lda fit")
    report_result(state.result, throw, "LDA failed: " + SINGULAR_MESSAGE, error=ValueError, stacklevel=4)
    if is_concrete(state.scalings):
        if mode == "none" and float(state.shrinkage) > 0:
            warnings.warn(
                "LDA: the within-class covariance is numerically singular (collinear features); regularised with "
                f"Ledoit-Wolf shrinkage alpha={float(state.shrinkage):.3g}. Pass shrinkage=... to choose it.",
                UserWarning,
                stacklevel=3,
            )
    return state
