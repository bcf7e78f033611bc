"""jaxcompare.embed statistics: separability, two-sample tests, extremes (oracles: scikit-learn, SciPy, NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.spatial.distance import cdist
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from jaxcompare import embed
from jaxcompare.embed._common import stratified_folds, wilson_interval
from jaxcompare.embed._two_sample import _mmd2_from_gram


def _two_sources(n, d, shift, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d))
    b[:, 0] += shift
    return a, b


# ---------------------------------------------------------------------------------------------------- separability
def test_stratified_folds_are_balanced():
    y = jnp.asarray(np.r_[np.zeros(23), np.ones(11), 2 * np.ones(7)].astype(np.int32))
    f = np.asarray(stratified_folds(jax.random.key(0), y, 4))
    sizes = np.bincount(f, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for c in range(3):
        per = np.bincount(f[np.asarray(y) == c], minlength=4)
        assert per.max() - per.min() <= 1
    f2 = np.asarray(stratified_folds(jax.random.key(0), y, 4))
    np.testing.assert_array_equal(f, f2)


def test_separability_matches_sklearn_per_fold():
    rng = np.random.default_rng(0)
    n, d = 240, 6
    y = np.arange(n) % 3
    X = rng.normal(size=(n, d)) + 0.7 * rng.normal(size=(3, d))[y]
    key = jax.random.key(3)
    res = embed.separability(key, X, y, folds=4, shrinkage=None)
    folds = np.asarray(stratified_folds(key, jnp.asarray(y, jnp.int32), 4))
    correct = 0
    accs = []
    for f in range(4):
        tr, te = folds != f, folds == f
        pred = LinearDiscriminantAnalysis().fit(X[tr], y[tr]).predict(X[te])
        correct += np.sum(pred == y[te])
        accs.append(np.mean(pred == y[te]))
    np.testing.assert_allclose(res.accuracy, correct / n, atol=1e-12)
    np.testing.assert_allclose(res.fold_accuracies, accs, atol=1e-12)
    ci = scipy.stats.binomtest(int(correct), n).proportion_ci(0.95, method="wilson")
    np.testing.assert_allclose([res.ci_low, res.ci_high], [ci.low, ci.high], rtol=1e-10)
    np.testing.assert_allclose(res.chance, 1 / 3, atol=1e-12)
    assert res.n_samples == n and res.interval == "wilson" and res.level == 0.95


def test_wilson_interval_matches_scipy():
    for c, n, level in [(0, 10, 0.95), (10, 10, 0.9), (37, 50, 0.99)]:
        lo, hi = wilson_interval(jnp.asarray(float(c)), jnp.asarray(float(n)), level)
        ref = scipy.stats.binomtest(c, n).proportion_ci(level, method="wilson")
        np.testing.assert_allclose([lo, hi], [ref.low, ref.high], rtol=1e-10, atol=1e-14)


def test_separability_extremes_of_the_scale_and_float32():
    a, b = _two_sources(100, 5, 8.0, seed=1)
    X = np.concatenate([a, b]).astype(np.float32)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    res = embed.separability(jax.random.key(0), X, y)
    assert res.accuracy.dtype == jnp.float32
    assert float(res.accuracy) == 1.0 and float(res.ci_low) > 0.98
    a, b = _two_sources(100, 5, 0.0, seed=2)
    res0 = embed.separability(jax.random.key(0), np.concatenate([a, b]).astype(np.float32), y)
    # identical sources: accuracy is near chance; the 95% interval misses 0.5 with probability about 5%, and
    # this fixed seed is one where it covers it (checked), so the assertion is deterministic
    assert float(res0.ci_low) <= 0.5 <= float(res0.ci_high)


def test_separability_wide_data_and_vmap_over_keys():
    rng = np.random.default_rng(4)
    y = np.arange(40) % 2
    X = rng.normal(size=(40, 60)) + 1.5 * y[:, None] * (np.arange(60) < 3)[None, :]
    res = embed.separability(jax.random.key(1), X, y, folds=4)  # d > n: Ledoit-Wolf shrinkage by default
    assert np.all(np.asarray(res.shrinkage) > 0)
    assert np.isfinite(float(res.accuracy))
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.vmap(lambda k: embed.separability(k, X, y, folds=4, n_classes=2).accuracy)(keys)
    loop = [embed.separability(k, X, y, folds=4).accuracy for k in keys]
    np.testing.assert_allclose(batched, loop, atol=1e-12)
    with pytest.warns(UserWarning, match="singular"):
        embed.separability(jax.random.key(1), X, y, folds=4, shrinkage=None)


def test_separability_bad_input():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="at least two classes"):
        embed.separability(jax.random.key(0), X, np.zeros(20, int))
    with pytest.raises(ValueError, match="at least 2 samples"):
        embed.separability(jax.random.key(0), X, np.r_[np.zeros(19), 1].astype(int))
    with pytest.raises(ValueError, match="folds must be <= 20"):
        embed.separability(jax.random.key(0), X, y, folds=21)
    with pytest.raises(ValueError, match="length 20"):
        embed.separability(jax.random.key(0), X, y[:-2])
    with pytest.raises(TypeError, match="PRNG key"):
        embed.separability(None, X, y)
    with pytest.raises(ValueError, match="level must lie"):
        embed.separability(jax.random.key(0), X, y, level=1.0)


# ---------------------------------------------------------------------------------------------------- two-sample
def _naive_mmd2(a, b, sigma):
    k = lambda u, v: np.exp(-cdist(u, v, "sqeuclidean") / (2 * sigma**2))  # noqa: E731
    na, nb = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return (
        (kaa.sum() - np.trace(kaa)) / (na * (na - 1)) + (kbb.sum() - np.trace(kbb)) / (nb * (nb - 1)) - 2 * kab.mean()
    )


def test_mmd2_matches_naive_float64():
    a, b = _two_sources(30, 4, 0.5, seed=3)
    b = b[:25]
    np.testing.assert_allclose(embed.mmd2(a, b, bandwidth=1.3), _naive_mmd2(a, b, 1.3), rtol=1e-10)
    z = np.concatenate([a, b])
    d = cdist(z, z)[np.triu_indices(len(z), 1)]
    np.testing.assert_allclose(embed.mmd2(a, b), _naive_mmd2(a, b, np.median(d)), rtol=1e-10)
    res = embed.two_sample_test(jax.random.key(0), a, b, n_permutations=50)
    np.testing.assert_allclose(res.bandwidth, np.median(d), rtol=1e-10)
    np.testing.assert_allclose(res.statistic, _naive_mmd2(a, b, np.median(d)), rtol=1e-10)


def test_mmd_permutation_statistics_match_naive():
    a, b = _two_sources(12, 3, 0.0, seed=4)
    z = np.concatenate([a, b])
    sigma = 0.9
    Kmat = np.exp(-cdist(z, z, "sqeuclidean") / (2 * sigma**2))
    rng = np.random.default_rng(0)
    S = np.stack([rng.permutation(np.r_[np.ones(12), np.zeros(12)]) for _ in range(5)], axis=1)
    got = _mmd2_from_gram(jnp.asarray(Kmat), jnp.asarray(S), 12, 12)
    ref = [_naive_mmd2(z[S[:, j] == 1], z[S[:, j] == 0], sigma) for j in range(5)]
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("method", ["mmd", "classifier"])
def test_p_value_formula_jit_and_dtype(method):
    a, b = _two_sources(20, 3, 0.3, seed=5)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    key = jax.random.key(1)
    res = embed.two_sample_test(key, a32, b32, method=method, n_permutations=99, batch=32)
    B = 99
    assert res.null_statistics.shape == (B,) and res.n_permutations == B and res.method == method
    assert res.statistic.dtype == jnp.float32 and res.p_value.dtype == jnp.float32
    expected = (1 + np.sum(np.asarray(res.null_statistics) >= float(res.statistic))) / (1 + B)
    np.testing.assert_allclose(res.p_value, expected, rtol=1e-6)
    jitted = jax.jit(lambda k, x, z: embed.two_sample_test(k, x, z, method=method, n_permutations=99, batch=32))
    rj = jitted(key, a32, b32)
    np.testing.assert_allclose(rj.p_value, res.p_value, atol=0)
    np.testing.assert_allclose(rj.statistic, res.statistic, rtol=1e-6)


def _rejections(method, shift, reps, n, d, B, seed):
    def one(k):
        ka, kb, kt = jax.random.split(k, 3)
        a = jax.random.normal(ka, (n, d))
        b = jax.random.normal(kb, (n, d)).at[:, 0].add(shift)
        return embed.two_sample_test(kt, a, b, method=method, n_permutations=B, batch=B).p_value

    p = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), reps))
    return int(np.sum(np.asarray(p) <= 0.05)), np.asarray(p)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mmd", "classifier"])
def test_false_positive_rate_at_nominal_level(method):
    # identical sources, alpha = 0.05, B = 99: P(p <= 0.05) = 5/100 exactly for a continuous statistic, so the number
    # of rejections in 300 independent replications is Binomial(300, 0.05) (mean 15). We accept 4..29:
    # P(X < 4) + P(X > 29) = 1.1e-3 + 3.6e-4 < 1.5e-3 is the false-failure probability of this check.
    reps = 300
    lo, hi = 4, 29
    assert scipy.stats.binom.cdf(lo - 1, reps, 0.05) + scipy.stats.binom.sf(hi, reps, 0.05) < 1.5e-3
    r, p = _rejections(method, 0.0, reps, n=20, d=3, B=99, seed=11)
    assert lo <= r <= hi, r
    assert p.min() >= 1 / 100 and p.max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mmd", "classifier"])
def test_power_on_shifted_sources(method):
    # mean shift of 1.5 standard deviations in one of 3 coordinates, 40 samples per source: the power of either
    # test is > 0.99 (estimated 1.00 over 1000 replications), so 25 of 25 rejections fail with probability < 0.25;
    # we require >= 22 of 25 (false-failure probability < C(25,4) 0.01^4 < 1.3e-4).
    r, _ = _rejections(method, 1.5, 25, n=40, d=3, B=99, seed=12)
    assert r >= 22, r


def test_two_sample_subsampling_and_bad_input():
    a, b = _two_sources(50, 3, 0.0, seed=6)
    res = embed.two_sample_test(jax.random.key(0), a, b[:30], max_samples=20, n_permutations=9)
    assert (res.n_a, res.n_b) == (20, 20)
    with pytest.raises(ValueError, match="same number of features"):
        embed.two_sample_test(jax.random.key(0), a, b[:, :2])
    with pytest.raises(ValueError, match="at least 2 samples"):
        embed.two_sample_test(jax.random.key(0), a[:1], b)
    with pytest.raises(ValueError, match="at least 4 samples"):
        embed.two_sample_test(jax.random.key(0), a[:3], b, method="classifier")
    with pytest.raises(ValueError, match="bandwidth must lie"):
        embed.two_sample_test(jax.random.key(0), a, b, bandwidth=0.0)
    with pytest.raises(ValueError, match="mmd' only"):
        embed.two_sample_test(jax.random.key(0), a, b, method="classifier", bandwidth=1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        embed.two_sample_test(jax.random.key(0), a, b, method="energy")
    bn = b.copy()
    bn[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embed.two_sample_test(jax.random.key(0), a, bn)


# ---------------------------------------------------------------------------------------------------- extremes
def test_extremes_match_numpy_sort():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 4))
    u = np.array([1.0, -2.0, 0.5, 0.0])
    ex = embed.extremes(X, u, k=5)
    s = (X - X.mean(0)) @ (u / np.linalg.norm(u))
    order = np.argsort(s)
    np.testing.assert_array_equal(ex.top_indices, order[::-1][:5])
    np.testing.assert_array_equal(ex.bottom_indices, order[:5])
    np.testing.assert_allclose(ex.top_scores, s[order[::-1][:5]], atol=1e-12)
    np.testing.assert_allclose(ex.bottom_scores, s[order[:5]], atol=1e-12)
    ex1 = embed.extremes(X, 2, k=3, center=False)
    np.testing.assert_array_equal(ex1.top_indices, np.argsort(X[:, 2])[::-1][:3])
    np.testing.assert_allclose(ex1.top_scores, np.sort(X[:, 2])[::-1][:3], atol=0)
    exj = jax.jit(lambda x, v: embed.extremes(x, v, k=5))(X, u)
    np.testing.assert_array_equal(exj.top_indices, ex.top_indices)


def test_extremes_bad_input():
    X = np.zeros((5, 3)) + np.arange(5)[:, None]
    with pytest.raises(ValueError, match="non-zero"):
        embed.extremes(X, np.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3\)"):
        embed.extremes(X, np.ones(4))
    with pytest.raises(ValueError, match="k must be <= 5"):
        embed.extremes(X, np.ones(3), k=6)
    with pytest.raises(ValueError, match="direction must be <= 2"):
        embed.extremes(X, 3)


# ---------------------------------------------------------------------------------------------------- issue 15 / 13
def _mmd2_naive(a, b, sigma):
    """Unbiased MMD^2 with a Gaussian kernel, written out with SciPy distances (float64 oracle)."""
    k = lambda x, y: np.exp(-cdist(x, y, "sqeuclidean") / (2 * sigma**2))  # noqa: E731
    na, nb = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return (
        (kaa.sum() - np.trace(kaa)) / (na * (na - 1))
        + (kbb.sum() - np.trace(kbb)) / (nb * (nb - 1))
        - 2 * k(a, b).mean()
    )


def test_duplicate_rows_never_give_a_false_significant_difference():
    # identical samples: every pairwise distance is 0 (the median heuristic was 0 and the kernel 0/0)
    ones = np.ones((20, 3))
    assert float(embed.mmd2(ones, ones)) == 0.0
    res = embed.two_sample_test(jax.random.key(0), ones, ones, n_permutations=99)
    assert float(res.statistic) == 0.0 and float(res.p_value) == 1.0 and np.isfinite(float(res.bandwidth))
    # mostly duplicates (median distance 0) but both samples from the same two-point law: not significant
    rng = np.random.default_rng(0)
    a = np.where(rng.random((40, 1)) < 0.1, 1.0, 0.0) * np.ones((1, 3))
    b = np.where(rng.random((40, 1)) < 0.1, 1.0, 0.0) * np.ones((1, 3))
    res = embed.two_sample_test(jax.random.key(1), a, b, n_permutations=199)
    assert np.isfinite(float(res.statistic)) and float(res.p_value) > 0.05  # seed-fixed; P(p <= 0.05) <= 0.05
    # the bandwidth is the median of the non-zero distances: the statistic equals the oracle at that sigma
    z = np.concatenate([a, b]) - np.concatenate([a, b]).mean(0)
    d = cdist(z, z)[np.triu_indices(80, 1)]
    sigma = np.median(d[d > 0])
    assert abs(float(res.bandwidth) - sigma) < 1e-12
    np.testing.assert_allclose(float(res.statistic), _mmd2_naive(a, b, sigma), rtol=1e-10, atol=1e-14)


def test_key_first_and_deprecated_keyword_agree():
    a, b = _two_sources(30, 3, 1.0, 0)
    new = embed.two_sample_test(jax.random.key(3), a, b, n_permutations=19)
    with pytest.warns(DeprecationWarning, match=r"two_sample_test\(key, a, b"):
        old = embed.two_sample_test(a, b, key=jax.random.key(3), n_permutations=19)
    np.testing.assert_array_equal(np.asarray(new.null_statistics), np.asarray(old.null_statistics))
    X, y = np.concatenate([a, b]), np.r_[np.zeros(30), np.ones(30)].astype(int)
    new = embed.separability(jax.random.key(4), X, y)
    with pytest.warns(DeprecationWarning, match=r"separability\(key, embeddings, labels"):
        old = embed.separability(X, y, key=jax.random.key(4))
    assert float(new.accuracy) == float(old.accuracy) and int(new.result) == 0
    with pytest.raises(TypeError, match="missing required positional"):
        embed.two_sample_test(a, b)
    with pytest.raises(TypeError, match="key twice"):
        embed.separability(jax.random.key(4), X, y, key=jax.random.key(4))


def test_separability_singular_fold_is_flagged_not_nan():
    X = np.repeat(np.eye(2), 10, axis=0)  # each class is one repeated point: no within-class scatter
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    with pytest.raises(ValueError, match=r"singular even after shrinkage.*\[result=singular\]"):
        embed.separability(jax.random.key(0), X, y, shrinkage=0.0)
    with pytest.warns(RuntimeWarning, match="singular"):
        res = embed.separability(jax.random.key(0), X, y, shrinkage=0.0, throw=False)
    assert int(res.result) == 5 and float(res.accuracy) == 1.0  # nearest class mean separates the two points


def test_half_precision_inputs_and_extreme_directions():
    """float16/bfloat16 embeddings are taken in float32: the MMD's kernel sums overflowed float16 (statistic NaN,
    p = 0.005 for two samples of one distribution) and PCA/LDA had no half-precision SVD. A direction of any scale
    gives the same extremes (its norm overflowed at 1e20 and underflowed at 1e-25: indices 0, 1, 2). Oracles:
    the float32 computation on the rounded values (itself checked against float64 above); NumPy's argsort."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    key = jax.random.key(0)
    for dt in (jnp.float16, jnp.bfloat16):
        ah, bh = jnp.asarray(a, dt), jnp.asarray(b, dt)
        a32, b32 = np.asarray(ah.astype(jnp.float32)), np.asarray(bh.astype(jnp.float32))
        got, ref = (
            embed.two_sample_test(key, ah, bh, n_permutations=200),
            embed.two_sample_test(key, a32, b32, n_permutations=200),
        )
        assert np.isfinite(float(got.statistic)) and float(got.p_value) > 0.05
        np.testing.assert_allclose(float(got.statistic), float(ref.statistic), rtol=1e-6)
        assert embed.pca(2).fit(ah).components.dtype == jnp.float32
        st = embed.lda().fit(ah[:40], np.arange(40) % 2)
        np.testing.assert_allclose(st.scalings, embed.lda().fit(a32[:40], np.arange(40) % 2).scalings, rtol=1e-5)
    X, u = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=5)
    order = np.argsort(-(X - X.mean(0)) @ u, kind="stable")
    for scale in (1.0, 1e20, 1e-25):
        ex = embed.extremes(X, u * scale, k=3)
        assert ex.top_indices.tolist() == order[:3].tolist() and ex.bottom_indices.tolist() == order[::-1][:3].tolist()
    assert embed.extremes(X.astype(np.float16), u * 300, k=3).top_indices.tolist() == order[:3].tolist()
    with pytest.raises(TypeError, match="center must be True or False"):
        embed.extremes(X, u, center="no")


def test_absent_classes_are_refused():
    """Labels {0, 2} (class 1 absent) gave an LDA direction of zeros; labels up to 10**6 tried to allocate 8 TB."""
    X = np.random.default_rng(1).normal(size=(40, 4))
    y = np.arange(40) % 2
    for labels, kw, shown in (
        (2 * y, {}, r"\[1\]"),
        (np.where(y == 0, 10**6, y), {}, r"'\.\.\.'"),
        (y, dict(n_classes=5), r"\[2, 3, 4\]"),
    ):
        with pytest.raises(ValueError, match=f"no samples of .* classes .*{shown}"):
            embed.lda(**kw).fit(X, labels)
    with pytest.raises(ValueError, match="no samples of 1 of the 3 classes"):
        embed.separability(jax.random.key(0), X, 2 * y)
