"""jaxcompare.embed transforms: PCA, LDA, chain, randomized SVD (oracles: scikit-learn, NumPy/SciPy in float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from jaxcompare import embed
from jaxcompare.embed._lda import _predict_lda
from jaxcompare.embed._pca import _resolve_method


def _decaying(n, d, seed=0, decay=0.8, offset=3.0):
    """Gaussian data with covariance spectrum decaying geometrically (well separated singular values)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = decay ** np.arange(d)
    return rng.normal(size=(n, d)) * scales[None, :] @ q.T + offset


def _labelled(n, d, K, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    rng.shuffle(y)
    A = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    X = rng.normal(size=(n, d)) @ A.T + sep * rng.normal(size=(K, d))[y]
    return X, y


def _match_signs(Z, Zref):
    s = np.sign(np.sum(np.asarray(Z) * np.asarray(Zref), axis=0))
    return np.asarray(Z) * s[None, :]


# ----------------------------------------------------------------------------------------------------------- PCA
@pytest.mark.parametrize("method", ["full", "covariance", "randomized"])
@pytest.mark.parametrize("shape", [(300, 40), (30, 80)])
def test_pca_matches_sklearn_float64(method, shape):
    X = _decaying(*shape, seed=1)
    k = 5
    t = embed.pca(jax.random.key(0), k, method=method, n_iter=6)
    st = t.fit(X)
    Z = t.apply(st, X)
    sk = PCA(k, svd_solver="full").fit(X)
    Zs = sk.transform(X)
    assert st.method == method
    assert st.components.dtype == jnp.float64 and Z.dtype == jnp.float64
    np.testing.assert_allclose(st.mean, sk.mean_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.explained_variance, sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(st.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(st.singular_values, sk.singular_values_, rtol=1e-9)
    comp = np.asarray(st.components)
    s = np.sign(np.sum(comp * sk.components_, axis=1))
    np.testing.assert_allclose(comp * s[:, None], sk.components_, atol=1e-7)
    np.testing.assert_allclose(_match_signs(Z, Zs), Zs, atol=1e-7 * np.abs(Zs).max())
    # sign convention: the largest-magnitude entry of each component is positive
    assert np.all(comp[np.arange(k), np.abs(comp).argmax(1)] > 0)


@pytest.mark.parametrize("method", ["full", "covariance", "randomized"])
def test_pca_float32_keeps_dtype_and_agrees(method):
    X64 = _decaying(400, 30, seed=2)
    X = np.asarray(X64, np.float32)
    t = embed.pca(jax.random.key(1), 4, method=method)
    st = t.fit(X)
    Z = t.apply(st, X)
    for leaf in jax.tree_util.tree_leaves(st):
        assert leaf.dtype == jnp.float32
    assert Z.dtype == jnp.float32
    sk = PCA(4, svd_solver="full").fit(X64)
    # float32 tolerance: relative 1e-4 on variances, 1e-3 on coordinates
    np.testing.assert_allclose(st.explained_variance, sk.explained_variance_, rtol=1e-4)
    Zs = sk.transform(X64)
    np.testing.assert_allclose(_match_signs(Z, Zs), Zs, atol=1e-3 * np.abs(Zs).max())


def test_pca_apply_single_sample_and_new_data():
    X = _decaying(100, 10)
    t = embed.pca(3)
    st = t.fit(X)
    x_new = _decaying(7, 10, seed=5)
    sk = PCA(3, svd_solver="full").fit(X)
    Z = t.apply(st, x_new)
    np.testing.assert_allclose(_match_signs(Z, sk.transform(x_new)), sk.transform(x_new), atol=1e-10)
    np.testing.assert_allclose(t.apply(st, x_new[0]), Z[0], atol=1e-12)
    assert t.apply(st, x_new[0]).shape == (3,)


def test_pca_jit_equals_eager_and_vmap_equals_loop():
    X = _decaying(120, 12, seed=3)
    for method in ["full", "covariance", "randomized"]:
        t = embed.pca(jax.random.key(2), 3, method=method)
        eager = t.fit(X)
        jitted = jax.jit(t.fit)(jnp.asarray(X))
        np.testing.assert_allclose(jitted.components, eager.components, atol=1e-10)
        np.testing.assert_allclose(jax.jit(t.apply)(eager, X), t.apply(eager, X), atol=1e-10)
    Xs = np.stack([_decaying(60, 8, seed=s) for s in range(3)])
    t = embed.pca(2, method="full")
    batched = jax.vmap(t.fit)(jnp.asarray(Xs))
    for i in range(3):
        single = t.fit(Xs[i])
        np.testing.assert_allclose(batched.components[i], single.components, atol=1e-10)
        np.testing.assert_allclose(batched.explained_variance[i], single.explained_variance, rtol=1e-10)


def test_pca_randomized_same_key_same_result():
    X = _decaying(200, 50, seed=4, decay=0.95)
    a = embed.pca(jax.random.key(7), 5, method="randomized", n_iter=1).fit(X)
    b = embed.pca(jax.random.key(7), 5, method="randomized", n_iter=1).fit(X)
    np.testing.assert_array_equal(a.components, b.components)
    # vmap over keys == loop over keys
    keys = jax.random.split(jax.random.key(8), 3)
    fit = lambda k: embed.pca(k, 5, method="randomized", n_iter=1).fit(X).explained_variance  # noqa: E731
    np.testing.assert_allclose(jax.vmap(fit)(keys), np.stack([fit(k) for k in keys]), rtol=1e-10)


def test_pca_auto_method_rule():
    assert _resolve_method("auto", 20000, 1024, 10, True) == "randomized"
    assert _resolve_method("auto", 20000, 1024, 10, False) == "covariance"  # no key, no randomness
    assert _resolve_method("auto", 20000, 1024, 400, True) == "covariance"
    assert _resolve_method("auto", 300, 200, 2, True) == "full"
    assert _resolve_method("full", 20000, 1024, 10, True) == "full"
    X = _decaying(600, 520, seed=0)
    assert embed.pca(jax.random.key(0), 3).fit(X).method == "randomized"
    assert embed.pca(3).fit(X).method == "full"


def test_pca_bad_input():
    X = _decaying(20, 5)
    with pytest.raises(ValueError, match="exceeds min"):
        embed.pca(6).fit(X)
    with pytest.raises(TypeError, match="needs an explicit PRNG key"):
        embed.pca(2, method="randomized")
    with pytest.raises(ValueError, match="method must be one of"):
        embed.pca(2, method="arpack")
    with pytest.raises(TypeError, match="integer"):
        embed.pca(2.5)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embed.pca(2).fit(Xn)
    with pytest.raises(ValueError, match="2 dimensions"):
        embed.pca(2).fit(X[0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        embed.pca(1).fit(X[:1])
    st = embed.pca(2).fit(X)
    with pytest.raises(ValueError, match="fitted on 5 features"):
        embed.pca(2).apply(st, X[:, :4])
    with pytest.raises(TypeError, match="PCAState"):
        embed.pca(2).apply((st,), X)


def test_randomized_svd_matches_numpy():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(300, 30)))
    V, _ = np.linalg.qr(rng.normal(size=(120, 30)))
    s = 2.0 ** -np.arange(30)
    A = (U * s) @ V.T
    Uk, sk_, Vtk = embed.randomized_svd(jax.random.key(0), A, 6, n_iter=3)
    u, s_ref, vt = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(sk_, s_ref[:6], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(Vtk) * vt[:6], axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(
        (np.asarray(Uk) * np.asarray(sk_)) @ np.asarray(Vtk), (u[:, :6] * s_ref[:6]) @ vt[:6], atol=1e-10
    )
    with pytest.raises(ValueError, match="k must be <="):
        embed.randomized_svd(jax.random.key(0), A, 121)


# ----------------------------------------------------------------------------------------------------------- LDA
@pytest.mark.parametrize("K", [2, 3, 5])
def test_lda_matches_sklearn_eigen_and_svd(K):
    X, y = _labelled(400, 12, K, seed=K)
    t = embed.lda()
    st = t.fit(X, y)
    Z = np.asarray(t.apply(st, X))
    assert Z.shape == (400, K - 1)
    # eigen solver: same normalisation v^T Sw v = 1 with the biased pooled covariance; sklearn does not centre
    ske = LinearDiscriminantAnalysis(solver="eigen").fit(X, y)
    Ze = ske.transform(X)
    Ze = Ze - (ske.priors_ @ ske.means_) @ ske.scalings_[:, : K - 1]
    np.testing.assert_allclose(_match_signs(Z, Ze), Ze, atol=1e-8 * np.abs(Ze).max())
    np.testing.assert_allclose(st.explained_variance_ratio, ske.explained_variance_ratio_[: K - 1], rtol=1e-8)
    # svd solver: same directions, different scale; compare unit-normalised coordinates
    sks = LinearDiscriminantAnalysis(solver="svd").fit(X, y)
    Zs = sks.transform(X)
    Zn = Z / np.linalg.norm(Z, axis=0)
    Zsn = Zs / np.linalg.norm(Zs, axis=0)
    np.testing.assert_allclose(_match_signs(Zn, Zsn), Zsn, atol=1e-8)
    np.testing.assert_allclose(st.explained_variance_ratio, sks.explained_variance_ratio_, rtol=1e-8)
    # the Bayes rule agrees with sklearn's predictions
    np.testing.assert_array_equal(np.asarray(_predict_lda(st, jnp.asarray(X))), sks.predict(X))
    np.testing.assert_allclose(st.means, sks.means_, atol=1e-12)
    np.testing.assert_allclose(st.priors, sks.priors_, atol=1e-15)
    assert float(st.shrinkage) == 0.0


def test_lda_orientation_and_within_class_whitening():
    X, y = _labelled(300, 6, 2, seed=11)
    st = embed.lda().fit(X, y)
    Z = np.asarray(embed.lda().apply(st, X))[:, 0]
    assert Z[y == 1].mean() > Z[y == 0].mean()  # points from source 0 to source 1
    pooled = sum(np.sum((Z[y == c] - Z[y == c].mean()) ** 2) for c in range(2)) / len(Z)
    np.testing.assert_allclose(pooled, 1.0, rtol=1e-10)


def _residuals(X, y, K):
    mu = np.stack([X[y == c].mean(0) for c in range(K)])
    return X - mu[y]


def _numpy_lda_directions(X, y, K, alpha):
    """Float64 oracle: generalized eigenproblem Sb v = lam Sw_alpha v with SciPy."""
    n, d = X.shape
    pri = np.bincount(y, minlength=K) / n
    mu = np.stack([X[y == c].mean(0) for c in range(K)])
    xbar = pri @ mu
    R = _residuals(X, y, K)
    Sw = R.T @ R / n
    Swa = (1 - alpha) * Sw + alpha * np.trace(Sw) / d * np.eye(d)
    D = mu - xbar
    Sb = (D * pri[:, None]).T @ D
    lam, V = scipy.linalg.eigh(Sb, Swa)
    return lam[::-1][: K - 1], V[:, ::-1][:, : K - 1]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_lda_fixed_shrinkage_matches_scipy_generalized_eigh(alpha):
    K = 3
    X, y = _labelled(200, 8, K, seed=21)
    st = embed.lda(shrinkage=alpha).fit(X, y)
    lam, V = _numpy_lda_directions(X, y, K, alpha)
    S = np.asarray(st.scalings)
    np.testing.assert_allclose(np.abs(np.sum(S * V, axis=0)) / np.sum(V * V, axis=0), 1.0, atol=1e-8)
    np.testing.assert_allclose(st.explained_variance_ratio, lam / lam.sum(), rtol=1e-8)
    np.testing.assert_allclose(st.shrinkage, alpha, atol=0)


def test_lda_auto_shrinkage_is_ledoit_wolf_of_residuals():
    K = 2
    X, y = _labelled(60, 40, K, seed=5)
    st = embed.lda(shrinkage="auto").fit(X, y)
    ref = ledoit_wolf_shrinkage(_residuals(X, y, K), assume_centered=True)
    np.testing.assert_allclose(st.shrinkage, ref, rtol=1e-10)
    lam, V = _numpy_lda_directions(X, y, K, float(ref))
    S = np.asarray(st.scalings)
    np.testing.assert_allclose(np.abs(np.sum(S * V, axis=0)) / np.sum(V * V, axis=0), 1.0, atol=1e-8)


def test_lda_more_dimensions_than_samples_regularises_and_says_so():
    X, y = _labelled(30, 100, 2, seed=3)
    with pytest.warns(UserWarning, match="singular; regularising with Ledoit-Wolf"):
        st = embed.lda().fit(X, y)
    assert 0 < float(st.shrinkage) <= 1
    assert np.all(np.isfinite(np.asarray(st.scalings)))
    ref = ledoit_wolf_shrinkage(_residuals(X, y, 2), assume_centered=True)
    np.testing.assert_allclose(st.shrinkage, ref, rtol=1e-10)


def test_lda_collinear_features_fall_back_with_warning():
    X, y = _labelled(200, 6, 2, seed=4)
    X = np.concatenate([X, X[:, :1] * 2.0], axis=1)  # an exactly collinear feature
    with pytest.warns(UserWarning, match="numerically singular"):
        st = embed.lda().fit(X, y)
    assert float(st.shrinkage) > 0
    assert np.all(np.isfinite(np.asarray(st.scalings)))


def test_lda_float32_and_jit_and_vmap():
    X, y = _labelled(200, 10, 3, seed=8)
    X32 = np.asarray(X, np.float32)
    t = embed.lda(n_classes=3)
    st = t.fit(X32, y)
    assert st.scalings.dtype == jnp.float32 and t.apply(st, X32).dtype == jnp.float32
    st64 = t.fit(X, y)
    Z32, Z64 = np.asarray(t.apply(st, X32)), np.asarray(t.apply(st64, X))
    np.testing.assert_allclose(_match_signs(Z32, Z64), Z64, atol=1e-3 * np.abs(Z64).max())
    jitted = jax.jit(t.fit)(jnp.asarray(X), jnp.asarray(y))
    np.testing.assert_allclose(jitted.scalings, st64.scalings, atol=1e-10)
    Xs = np.stack([_labelled(90, 5, 3, seed=s)[0] for s in range(3)])
    ys = np.stack([_labelled(90, 5, 3, seed=s)[1] for s in range(3)])
    batched = jax.vmap(t.fit)(jnp.asarray(Xs), jnp.asarray(ys))
    for i in range(3):
        np.testing.assert_allclose(batched.scalings[i], t.fit(Xs[i], ys[i]).scalings, atol=1e-10)
    with pytest.raises(ValueError, match="pass n_classes"):
        jax.jit(embed.lda().fit)(jnp.asarray(X), jnp.asarray(y))


def test_lda_bad_input():
    X, y = _labelled(50, 4, 2)
    with pytest.raises(ValueError, match="at least two classes"):
        embed.lda().fit(X, np.zeros(50, int))
    with pytest.raises(ValueError, match="length 50"):
        embed.lda().fit(X, y[:-1])
    with pytest.raises(TypeError, match="labels are required"):
        embed.lda().fit(X)
    with pytest.raises(ValueError, match="at most min"):
        embed.lda(n_components=2).fit(X, y)
    with pytest.raises(ValueError, match="integer class labels"):
        embed.lda().fit(X, y + 0.5)
    Xn = X.copy()
    Xn[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        embed.lda().fit(Xn, y)
    with pytest.raises(ValueError, match="shrinkage must"):
        embed.lda(shrinkage="ledoit")
    with pytest.raises(ValueError, match=r"shrinkage must lie in \[0, 1\]"):
        embed.lda(shrinkage=1.5)
    with pytest.raises(ValueError, match="singular even after shrinkage"):
        embed.lda(shrinkage=0.0).fit(np.repeat(np.eye(2), 5, axis=0), np.repeat([0, 1], 5))


# ----------------------------------------------------------------------------------------------------------- chain
def test_chain_equals_manual_composition():
    X, y = _labelled(300, 30, 3, seed=9)
    p, l = embed.pca(8), embed.lda()
    t = embed.chain(p, l)
    st = t.fit(X, y)
    sp = p.fit(X)
    Zp = p.apply(sp, X)
    sl = l.fit(Zp, y)
    np.testing.assert_allclose(t.apply(st, X), l.apply(sl, Zp), atol=1e-12)
    assert isinstance(st, tuple) and isinstance(st[0], embed.PCAState) and isinstance(st[1], embed.LDAState)
    st2, Z2 = t.fit_apply(X, y)
    np.testing.assert_allclose(Z2, t.apply(st, X), atol=0)
    jitted = jax.jit(embed.chain(embed.pca(8), embed.lda(n_classes=3)).fit)(jnp.asarray(X), jnp.asarray(y))
    np.testing.assert_allclose(jitted[1].scalings, st[1].scalings, atol=1e-10)


def test_chain_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        embed.chain()
    with pytest.raises(TypeError, match="must be a Transform"):
        embed.chain(embed.pca(2), lambda x: x)
    t = embed.chain(embed.pca(2), embed.pca(1))
    with pytest.raises(ValueError, match="tuple of 2 states"):
        t.apply((), np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------------- issue 15 / 13
@pytest.mark.parametrize("method", ["covariance", "auto", "full"])
def test_pca_k_equal_n_below_d_gives_orthonormal_components(method):
    X = np.random.default_rng(0).normal(size=(5, 20))  # wide: the Gram path of "covariance" (and "auto" picks it)
    st = embed.pca(5, method=method).fit(X)
    C = np.asarray(st.components)
    np.testing.assert_allclose(C @ C.T, np.eye(5), atol=1e-10)  # a zero row fails here
    _, s, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)  # float64 oracle
    np.testing.assert_allclose(np.abs(C[:4] @ Vt[:4].T), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(np.asarray(st.singular_values)[:4], s[:4], rtol=1e-9)
    assert float(st.explained_variance[4]) < 1e-12 * float(st.explained_variance[0])  # rounding (covariance)
    np.testing.assert_allclose(C[4] @ Vt[:4].T, 0.0, atol=1e-10)  # the completion is orthogonal to the data


def test_pca_key_first_and_deprecated_keyword_agree():
    X = np.random.default_rng(1).normal(size=(40, 12))
    new = embed.pca(jax.random.key(3), 3, method="randomized", n_iter=2).fit(X)
    with pytest.warns(DeprecationWarning, match=r"pca\(key, n_components"):
        old = embed.pca(3, method="randomized", key=jax.random.key(3), n_iter=2).fit(X)
    np.testing.assert_array_equal(np.asarray(new.components), np.asarray(old.components))
    assert embed.pca(None, 3).fit(X).method == embed.pca(3).fit(X).method == "full"
    with pytest.raises(TypeError, match="key twice"):
        embed.pca(jax.random.key(3), 3, key=jax.random.key(3))


def test_lda_singular_fit_is_flagged_with_a_finite_state():
    X = np.repeat(np.eye(3)[:, :2] * 2.0, 4, axis=0)[:8]  # class 0 at (2, 0), class 1 at (0, 2): no scatter
    y = np.r_[np.zeros(4), np.ones(4)].astype(int)
    with pytest.raises(ValueError, match="singular even after shrinkage"):
        embed.lda(shrinkage=0.0).fit(X, y)
    with pytest.warns(RuntimeWarning, match=r"\[result=singular\]"):
        st = embed.lda(shrinkage=0.0, throw=False).fit(X, y)
    assert int(st.result) == 5
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(st))
    ok = embed.lda().fit(np.random.default_rng(0).normal(size=(8, 2)), y)
    assert int(ok.result) == 0
