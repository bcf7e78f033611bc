"""Permutation two-sample tests: kernel MMD (Gaussian kernel, median heuristic) and an LDA classifier test."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import REQUIRED, check_choice, check_float, check_int, check_key, key_first
from ._common import check_data, mm, stratified_folds
from ._lda import _fit_lda, _predict_lda

__all__ = ["TwoSampleTest", "two_sample_test", "mmd2"]


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["statistic", "p_value", "null_statistics", "bandwidth"],
    meta_fields=["method", "n_permutations", "n_a", "n_b"],
)
@dataclasses.dataclass(frozen=True)
class TwoSampleTest:
    """Result of :func:`two_sample_test`.

    Attributes:
      statistic: ``()`` observed statistic (unbiased :math:`\\mathrm{MMD}^2_u` or held-out classifier accuracy).
      p_value: ``()`` permutation p-value :math:`(1 + \\#\\{T_\\pi \\ge T\\})/(1 + B)`.
      null_statistics: ``(B,)`` statistics of the permuted samples.
      bandwidth: ``()`` Gaussian kernel bandwidth :math:`\\sigma` (MMD), 0 for the classifier test.
      method: ``"mmd"`` or ``"classifier"``.
      n_permutations: :math:`B`.
      n_a, n_b: sample sizes used (after subsampling to ``max_samples``).
    """

    statistic: jax.Array
    p_value: jax.Array
    null_statistics: jax.Array
    bandwidth: jax.Array
    method: str
    n_permutations: int
    n_a: int
    n_b: int


def _sq_dists(Z: jax.Array) -> jax.Array:
    """Squared distances of the rows of ``Z``; values at the level of rounding (duplicate rows) are exactly 0."""
    sq = jnp.sum(Z * Z, axis=1)
    D2 = sq[:, None] + sq[None, :] - 2.0 * mm(Z, Z.T)
    tol = 16 * jnp.finfo(Z.dtype).eps * (sq[:, None] + sq[None, :])
    D2 = jnp.where(D2 <= tol, 0.0, D2)
    return D2 * (1.0 - jnp.eye(Z.shape[0], dtype=Z.dtype))


def _mmd2_from_gram(Kmat: jax.Array, S: jax.Array, n_a: int, n_b: int) -> jax.Array:
    """Unbiased MMD^2 for each column of the 0/1 membership matrix ``S`` (1 = first sample); diag(K) = 1."""
    r = jnp.sum(Kmat, axis=1)
    KS = mm(Kmat, S)
    saa = jnp.sum(S * KS, axis=0)
    sa1 = mm(r[None, :], S)[0]
    sab = sa1 - saa
    sbb = jnp.sum(r) - 2.0 * sa1 + saa
    return (saa - n_a) / (n_a * (n_a - 1)) + (sbb - n_b) / (n_b * (n_b - 1)) - 2.0 * sab / (n_a * n_b)


def _median_bandwidth(D2: jax.Array) -> jax.Array:
    """Median heuristic on the *distinct* pairs: the median of the non-zero pairwise distances (duplicate rows would
    otherwise make it 0 and the kernel 0/0); 1 when every distance is 0 (all rows equal: the kernel is then all ones
    for any bandwidth, MMD^2 is exactly 0 and the p-value 1)."""
    m = D2.shape[0]
    iu = jnp.triu_indices(m, 1)
    d = D2[iu]
    med = jnp.nanmedian(jnp.where(d > 0, d, jnp.nan))
    return jnp.where(jnp.isfinite(med) & (med > 0), jnp.sqrt(jnp.where(med > 0, med, 1.0)), 1.0).astype(D2.dtype)


@partial(jax.jit, static_argnames=("n_a", "n_b"))
def _mmd2_stat(Z, bandwidth, n_a, n_b):
    D2 = _sq_dists(Z - jnp.mean(Z, axis=0)[None, :])
    sigma = jnp.where(bandwidth > 0, bandwidth, _median_bandwidth(D2))
    Kmat = jnp.exp(-D2 / (2.0 * sigma * sigma))
    s0 = (jnp.arange(n_a + n_b) < n_a).astype(Z.dtype)[:, None]
    same = jnp.all(D2 == 0)  # one point repeated: MMD^2 is exactly 0 (the formula leaves rounding residue)
    return jnp.where(same, 0.0, _mmd2_from_gram(Kmat, s0, n_a, n_b)[0]).astype(Z.dtype), sigma, Kmat, same


def _permutation_stats(key, s0, stat_fn, n_permutations, batch):
    """Statistic of ``n_permutations`` random permutations of the membership vector ``s0``, ``batch`` at a time."""
    n_chunks = -(-n_permutations // batch)
    keys = jax.random.split(key, n_chunks * batch).reshape((n_chunks, batch))

    def chunk(ks):
        S = jax.vmap(lambda k: jax.random.permutation(k, s0))(ks)  # (batch, m)
        return stat_fn(S.T)

    return jax.lax.map(chunk, keys).reshape(-1)[:n_permutations]


def _p_value(t, null):
    return ((1.0 + jnp.sum(null >= t)) / (1.0 + null.shape[0])).astype(t.dtype)


@partial(jax.jit, static_argnames=("n_a", "n_b", "n_permutations", "batch"))
def _mmd_test(key, Z, bandwidth, n_a, n_b, n_permutations, batch):
    t, sigma, Kmat, same = _mmd2_stat(Z, bandwidth, n_a, n_b)
    s0 = (jnp.arange(n_a + n_b) < n_a).astype(Z.dtype)
    null = _permutation_stats(key, s0, lambda S: _mmd2_from_gram(Kmat, S, n_a, n_b), n_permutations, batch)
    null = jnp.where(same, 0.0, null).astype(Z.dtype)
    return TwoSampleTest(t, _p_value(t, null), null, sigma, "mmd", n_permutations, n_a, n_b)


@partial(jax.jit, static_argnames=("n_a", "n_b", "n_permutations", "batch"))
def _classifier_test(key, Z, n_a, n_b, n_permutations, batch):
    k_split, k_perm = jax.random.split(key)
    y = (jnp.arange(n_a + n_b) >= n_a).astype(jnp.int32)
    test = stratified_folds(k_split, y, 2) == 1
    state = _fit_lda(Z, y, (~test).astype(Z.dtype), 0.0, 2, 1, "auto")
    pred = _predict_lda(state, Z)
    w = test.astype(Z.dtype)
    t = jnp.sum(w * (pred == y).astype(Z.dtype)) / jnp.sum(w)
    # permuting labels among the test points only: pred is fixed, agreement with permuted labels is the null
    pred = pred.astype(Z.dtype)
    idx = jnp.argsort(~test, stable=True)  # test points first
    n_te = (n_a + n_b) // 2
    yt = y[idx[:n_te]].astype(Z.dtype)
    pt = pred[idx[:n_te]]

    def stat_fn(S):  # S: (n_te, batch) permuted test labels
        return jnp.mean(S * pt[:, None] + (1.0 - S) * (1.0 - pt[:, None]), axis=0)

    null = _permutation_stats(k_perm, yt, stat_fn, n_permutations, batch)
    return TwoSampleTest(t, _p_value(t, null), null, jnp.zeros((), Z.dtype), "classifier", n_permutations, n_a, n_b)


def _subsample(key, X, m):
    if X.shape[0] <= m:
        return X
    return X[jax.random.choice(key, X.shape[0], (m,), replace=False)]


def two_sample_test(
    key: Any = REQUIRED,
    a: Any = REQUIRED,
    b: Any = REQUIRED,
    /,
    *,
    method: str = "mmd",
    n_permutations: int = 1000,
    bandwidth: Any = None,
    max_samples: int = 2000,
    batch: int = 128,
    **deprecated: Any,
) -> TwoSampleTest:
    r"""Do samples ``a`` and ``b`` come from the same distribution? A permutation test with an exact level.

    ``method="mmd"`` (default): the unbiased squared maximum mean discrepancy with a Gaussian kernel
    :math:`k(x,y) = \exp(-\|x-y\|^2/2\sigma^2)`,

    .. math:: \mathrm{MMD}^2_u = \tfrac{1}{n_a(n_a-1)}\sum_{i\ne j} k(a_i,a_j) + \tfrac{1}{n_b(n_b-1)}\sum_{i\ne j}
              k(b_i,b_j) - \tfrac{2}{n_a n_b}\sum_{i,j} k(a_i,b_j),

    with :math:`\sigma` the median pairwise distance of the pooled sample (median heuristic) unless ``bandwidth`` is
    given (Gretton et al. 2012). The median is taken over the non-zero distances, so duplicate rows cannot make it
    0; when all rows are equal the samples are identical, the statistic is exactly 0 and the p-value 1.
    ``method="classifier"``: a classifier two-sample test (Lopez-Paz & Oquab 2017) -- an
    LDA classifier with Ledoit-Wolf shrinkage is fitted on a stratified half and its accuracy on the other half is the
    statistic; the null permutes the labels of the held-out half (valid because, under the null, labels of held-out
    points are exchangeable given the fitted classifier).

    The p-value :math:`(1 + \#\{b: T_{\pi_b} \ge T\})/(1 + B)` is valid (exact level: :math:`P(p \le \alpha) \le
    \alpha`) for any number of permutations :math:`B`; the smallest possible value is :math:`1/(1+B)`. Permutations
    are vectorised (``vmap``) in batches of ``batch`` inside ``lax.map``; each batch of the MMD test is one product of
    the :math:`m\times m` kernel matrix with an :math:`m\times` ``batch`` membership matrix.

    Memory: the MMD test holds the :math:`m\times m` kernel matrix, :math:`m = n_a + n_b`; each sample is therefore
    subsampled without replacement (from ``key``) to at most ``max_samples`` rows, so memory stays at a few
    :math:`m\times m` arrays with :math:`m \le 2\,\text{max\_samples}` (2000 -> 16e6 entries each, 128 MB in
    float64). The classifier test holds one LDA fit (a :math:`d\times d` covariance). The test stays valid on a
    subsample (it is a test of the same hypothesis on fewer points); raise ``max_samples`` for more power.

    Works under ``jit`` and ``vmap`` over keys (value checks only run eagerly).

    Args:
      key: PRNG key (subsampling, split, permutations), the first positional argument
        (``two_sample_test(a, b, key=k)`` still works for one release, with a ``DeprecationWarning``).
      a: ``(n_a, d)`` samples of the first source (``n_a >= 2``; 4 for the classifier test).
      b: ``(n_b, d)`` samples of the second source.
      method: ``"mmd"`` or ``"classifier"``.
      n_permutations: :math:`B \ge 1`.
      bandwidth: Gaussian kernel :math:`\sigma > 0`; ``None`` for the median heuristic (MMD only).
      max_samples: per-source cap on the number of samples used.
      batch: permutations per vectorised batch.

    Returns:
      :class:`TwoSampleTest` with ``statistic``, ``p_value``, ``null_statistics``, ``bandwidth``.

    Example:
      >>> X = jax.random.normal(jax.random.key(0), (60, 3))
      >>> src = jnp.arange(60) % 2
      >>> X = X.at[:, 0].add(1.5 * src)   # source 1 is shifted along feature 0
      >>> res = embed.two_sample_test(jax.random.key(0), X[src == 0], X[src == 1])
      >>> res.method, res.n_a, res.n_b, res.null_statistics.shape
      ('mmd', 30, 30, (1000,))
      >>> round(float(res.p_value), 4)   # 1/(1 + 1000), the smallest possible: the sources differ
      0.001

    References:
      A. Gretton, K. Borgwardt, M. Rasch, B. Schoelkopf, A. Smola, "A kernel two-sample test", JMLR 13 (2012);
      D. Lopez-Paz, M. Oquab, "Revisiting classifier two-sample tests", ICLR 2017;
      B. Phipson, G. Smyth, "Permutation p-values should never be zero", Stat. Appl. Genet. Mol. Biol. 9 (2010).
    """
    key, a, b = key_first("two_sample_test", (key, a, b), deprecated, ("key", "a", "b"))
    key = check_key(key)
    check_choice(method, "method", ("mmd", "classifier"))
    min_n = 2 if method == "mmd" else 4
    A = check_data(a, "a", min_samples=min_n)
    B = check_data(b, "b", min_samples=min_n)
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"a and b must have the same number of features, got a with shape {tuple(A.shape)} and b with shape "
            f"{tuple(B.shape)}."
        )
    n_permutations = check_int(n_permutations, "n_permutations", min=1)
    max_samples = check_int(max_samples, "max_samples", min=min_n)
    batch = check_int(batch, "batch", min=1)
    batch = min(batch, n_permutations)
    if bandwidth is not None:
        if method != "mmd":
            raise ValueError("bandwidth applies to method='mmd' only.")
        check_float(bandwidth, "bandwidth", low=0.0, low_open=True)
    dtype = jnp.result_type(A.dtype, B.dtype)
    k_sub_a, k_sub_b, k_test = jax.random.split(key, 3)
    A = _subsample(k_sub_a, A.astype(dtype), max_samples)
    B = _subsample(k_sub_b, B.astype(dtype), max_samples)
    Z = jnp.concatenate([A, B], axis=0)
    n_a, n_b = A.shape[0], B.shape[0]
    if method == "mmd":
        bw = jnp.asarray(0.0 if bandwidth is None else bandwidth, dtype)
        return _mmd_test(k_test, Z, bw, n_a, n_b, n_permutations, batch)
    return _classifier_test(k_test, Z, n_a, n_b, n_permutations, batch)


def mmd2(a: Any, b: Any, *, bandwidth: Any = None) -> jax.Array:
    r"""Unbiased squared MMD between samples ``a`` ``(n_a, d)`` and ``b`` ``(n_b, d)`` with a Gaussian kernel.

    See :func:`two_sample_test` for the formula; ``bandwidth=None`` uses the median heuristic on the pooled sample.
    The estimate is unbiased, so it can be slightly negative when the distributions are equal; it is exactly 0 when
    every row of both samples is the same point.

    Example:
      >>> ka, kb, kc = jax.random.split(jax.random.key(0), 3)
      >>> a = jax.random.normal(ka, (50, 3))
      >>> b = jax.random.normal(kb, (50, 3)) + 2.0   # another distribution (shifted)
      >>> c = jax.random.normal(kc, (50, 3))         # the same distribution as a
      >>> bool(embed.mmd2(a, b) > 0.1)
      True
      >>> bool(abs(embed.mmd2(a, c)) < 0.05)   # close to zero
      True
    """
    A = check_data(a, "a")
    B = check_data(b, "b")
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"a and b must have the same number of features, got {A.shape[1]} and {B.shape[1]}.")
    if bandwidth is not None:
        check_float(bandwidth, "bandwidth", low=0.0, low_open=True)
    dtype = jnp.result_type(A.dtype, B.dtype)
    Z = jnp.concatenate([A.astype(dtype), B.astype(dtype)], axis=0)
    bw = jnp.asarray(0.0 if bandwidth is None else bandwidth, dtype)
    return _mmd2_stat(Z, bw, A.shape[0], B.shape[0])[0]
