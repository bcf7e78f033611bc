"""Kernel similarity (jaxcompare.similarity) against float64 NumPy oracles written here from the spec's formulas.

Oracles: H = I - 11ᵀ/n, HSIC_b = tr(KHLH)/(n-1)², HSIC_u of Song et al. (2012) term by term, CKA = HSIC(K, L) /
sqrt(HSIC(K, K) HSIC(L, L)); permutation p-values by a NumPy loop over the same permutations; NTK kernels from
full float64 Jacobians (tests/ntk_models.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc
from jaxcompare.similarity import (
    CKATest,
    KernelSimilarity,
    cka,
    cka_test,
    kernel_similarity,
    linear_cka,
    plot_similarity,
)


# ----------------------------------------------------------------------------------------------------------------
# float64 NumPy oracle (spec/similarity.md)
# ----------------------------------------------------------------------------------------------------------------
def np_hsic_b(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def np_hsic_u(K, L):
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2 * one @ Kt @ Lt @ one / (n - 2)
    ) / (n * (n - 3))


def np_cka(K, L, debiased=False):
    K, L = np.asarray(K, np.float64), np.asarray(L, np.float64)
    h = np_hsic_u if debiased else np_hsic_b
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def rbf(X, gamma):
    X = np.asarray(X, np.float64)
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-gamma * d)


def features(seed, n, p, q, shared=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = rng.normal(size=(n, q))
    k = min(p, q)
    Y[:, :k] += shared * X[:, :k]
    return X, Y


# ----------------------------------------------------------------------------------------------------------------
# cka, linear_cka: values
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,p,q,shared", [(4, 3, 2, 0.5), (7, 5, 9, 1.0), (30, 4, 6, 0.3), (25, 40, 40, 0.0)])
def test_cka_matches_numpy_oracle(debiased, n, p, q, shared):
    X, Y = features(n + p, n, p, q, shared)
    K, L = X @ X.T, rbf(Y, 0.1)
    got = cka(K, L, debiased=debiased)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), np_cka(K, L, debiased), rtol=1e-9, atol=1e-12)
    # float32: dtype kept, documented tolerance 1e-4 (absolute, CKA is O(1))
    got32 = cka(K.astype(np.float32), L.astype(np.float32), debiased=debiased)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(float(got32), np_cka(K, L, debiased), atol=1e-4)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,p,q,shared", [(4, 3, 2, 0.5), (9, 5, 9, 1.0), (40, 6, 3, 0.3), (32, 64, 64, 0.0)])
def test_linear_cka_matches_oracle_and_kernel_form(debiased, n, p, q, shared):
    X, Y = features(2 * n + q, n, p, q, shared)
    X = X + 3.0  # a mean offset: the features are centred internally
    want = np_cka(X @ X.T, Y @ Y.T, debiased)
    got = linear_cka(X, Y, debiased=debiased)
    np.testing.assert_allclose(float(got), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(got), float(cka(X @ X.T, Y @ Y.T, debiased=debiased)), rtol=1e-9, atol=1e-12)
    got32 = linear_cka(X.astype(np.float32), Y.astype(np.float32), debiased=debiased)
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(float(got32), want, atol=1e-4)


def test_mixed_dtypes_promote_and_ints_become_float():
    X, Y = features(1, 10, 3, 3, 0.5)
    assert cka((X @ X.T).astype(np.float32), Y @ Y.T).dtype == jnp.float64
    Xi = np.arange(30).reshape(10, 3) % 7
    assert jnp.issubdtype(linear_cka(Xi, Y).dtype, jnp.floating)


def test_known_values():
    # identical kernels: 1; a kernel and its own scaled copy: 1
    X, Y = features(2, 12, 4, 4)
    K = X @ X.T
    for d in (False, True):
        assert float(cka(K, K, debiased=d)) == pytest.approx(1.0, abs=1e-12)
        assert float(linear_cka(X, 5 * X, debiased=d)) == pytest.approx(1.0, abs=1e-12)
    # one-dimensional features: biased linear CKA = squared Pearson correlation (closed form)
    a, b = X[:, 0], X[:, 0] + Y[:, 0]
    r = np.corrcoef(a, b)[0, 1]
    assert float(linear_cka(a[:, None], b[:, None])) == pytest.approx(r**2, rel=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(debiased):
    X, Y = features(3, 20, 6, 5, 0.7)
    base = float(linear_cka(X, Y, debiased=debiased))
    Q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(6, 6)))
    assert float(linear_cka(X @ Q, Y, debiased=debiased)) == pytest.approx(base, abs=1e-12)  # orthogonal
    assert float(linear_cka(2.5 * X, 0.1 * Y, debiased=debiased)) == pytest.approx(base, abs=1e-12)  # isotropic scale
    assert float(linear_cka(X + 7.0, Y - 1.0, debiased=debiased)) == pytest.approx(base, abs=1e-11)  # translation
    K, L = X @ X.T, rbf(Y, 0.2)
    kb = float(cka(K, L, debiased=debiased))
    assert float(cka(3.0 * K, 0.5 * L, debiased=debiased)) == pytest.approx(kb, abs=1e-12)
    perm = np.random.default_rng(5).permutation(20)  # relabelling the points on both sides
    assert float(cka(K[perm][:, perm], L[perm][:, perm], debiased=debiased)) == pytest.approx(kb, abs=1e-12)
    # not invariant to a general invertible linear map (sanity: the test can fail)
    A = np.random.default_rng(6).normal(size=(6, 6))
    assert abs(float(linear_cka(X @ A, Y, debiased=debiased)) - base) > 1e-3


def test_debiased_removes_the_small_sample_bias():
    # independent Gaussians, n = 32, p = q = 64 (spec: biased ~0.67, unbiased ~0 +- 0.05); 20 draws
    vals = {False: [], True: []}
    for s in range(20):
        X, Y = features(100 + s, 32, 64, 64)
        for d in (False, True):
            vals[d].append(float(linear_cka(X, Y, debiased=d)))
    assert 0.55 < np.mean(vals[False]) < 0.8
    # |mean| of 20 draws with sd ~0.05: 6 standard errors = 0.067 (false-failure probability < 1e-8)
    assert abs(np.mean(vals[True])) < 0.067


# ----------------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("debiased", [False, True])
def test_jit_equals_eager_and_vmap_equals_loop(debiased):
    Xs = np.stack([features(10 + s, 15, 4, 3, 0.5)[0] for s in range(4)])
    Ys = np.stack([features(10 + s, 15, 4, 3, 0.5)[1] for s in range(4)])
    Ks = np.einsum("bip,bjp->bij", Xs, Xs)
    Ls = np.stack([rbf(y, 0.3) for y in Ys])
    jk = jax.jit(functools.partial(cka, debiased=debiased))
    jl = jax.jit(functools.partial(linear_cka, debiased=debiased))
    loop_k = np.array([float(cka(k, l, debiased=debiased)) for k, l in zip(Ks, Ls)])
    loop_l = np.array([float(linear_cka(x, y, debiased=debiased)) for x, y in zip(Xs, Ys)])
    np.testing.assert_allclose([float(jk(k, l)) for k, l in zip(Ks, Ls)], loop_k, rtol=1e-12)
    np.testing.assert_allclose([float(jl(x, y)) for x, y in zip(Xs, Ys)], loop_l, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(functools.partial(cka, debiased=debiased))(Ks, Ls), loop_k, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(functools.partial(linear_cka, debiased=debiased))(Xs, Ys), loop_l, rtol=1e-12)


def test_degenerate_kernel_under_jit_is_nan_not_a_value():
    # documented: under jit only shapes are checked, a constant kernel gives NaN (eagerly it raises)
    X, _ = features(1, 8, 3, 3)
    out = jax.jit(cka)(jnp.ones((8, 8)), X @ X.T)
    assert np.isnan(float(out))


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
def test_cka_errors():
    X, Y = features(1, 8, 3, 3)
    K, L = X @ X.T, Y @ Y.T
    with pytest.raises(ValueError, match="K1 must have 2 dimensions"):
        cka(K[None], L)
    with pytest.raises(ValueError, match="K1 must be a square"):
        cka(X, L)
    with pytest.raises(ValueError, match="K2 must be a kernel on the same N = 8"):
        cka(K, L[:7, :7])
    bad = K.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="K1 must be finite"):
        cka(bad, L)
    with pytest.raises(ValueError, match="K2 must be finite"):
        cka(K, np.where(L > 1e9, L, np.inf))
    asym = L.copy()
    asym[0, 1] += 1e-3 * np.abs(L).max()
    with pytest.raises(ValueError, match="K2 must be symmetric"):
        cka(K, asym)
    tiny = L.copy()
    tiny[0, 1] += 1e-10 * np.abs(L).max()  # within sqrt(eps) of float64: accepted
    assert np.isfinite(float(cka(K, tiny)))
    with pytest.raises(ValueError, match="N >= 4"):
        cka(K[:3, :3], L[:3, :3], debiased=True)
    with pytest.raises(ValueError, match="N >= 2"):
        cka(K[:1, :1], L[:1, :1])
    with pytest.raises(ValueError, match="CKA is undefined for K1.*constant after centring"):
        cka(np.full((8, 8), 2.0), L)
    a = np.arange(8.0)
    with pytest.raises(ValueError, match="CKA is undefined for K2"):
        cka(K, a[:, None] + a[None, :])  # K_ij = a_i + a_j: centred kernel is 0
    with pytest.raises(ValueError, match="CKA is undefined for K1.*U-centred"):
        cka(np.eye(8), L, debiased=True)  # all points equally dissimilar: no structure for the debiased HSIC
    assert np.isfinite(float(cka(np.eye(8), L)))  # ...while the biased CKA is defined
    with pytest.raises(TypeError, match="debiased must be True or False"):
        cka(K, L, debiased="yes")
    with pytest.raises(TypeError, match="K1 must be a numeric array"):
        cka("kernel", L)
    with pytest.raises(TypeError, match="K1 is required"):
        cka(None, L)


def test_linear_cka_errors():
    X, Y = features(1, 8, 3, 3)
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        linear_cka(X[:, 0], Y)
    with pytest.raises(ValueError, match="Y must have one row per point, the same N = 8"):
        linear_cka(X, Y[:5])
    with pytest.raises(ValueError, match="Y must be finite"):
        linear_cka(X, np.full_like(Y, np.nan))
    with pytest.raises(ValueError, match="X must not be empty"):
        linear_cka(np.zeros((8, 0)), Y)
    with pytest.raises(ValueError, match="N >= 4"):
        linear_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="CKA is undefined for X.*do not vary"):
        linear_cka(np.ones((8, 3)) * np.array([1.0, 2.0, 3.0]), Y)
    with pytest.raises(ValueError, match="CKA is undefined for Y"):
        linear_cka(X, np.zeros((8, 2)), debiased=True)
    with pytest.raises(ValueError, match="CKA is undefined for X.*U-centred"):
        linear_cka(np.eye(8), Y, debiased=True)  # one-hot points: equally dissimilar


# ----------------------------------------------------------------------------------------------------------------
# cka_test
# ----------------------------------------------------------------------------------------------------------------
def _perms(key, B, n):
    """Permutation b is jax.random.permutation(jax.random.split(key, B)[b], n) (documented in _permutation.py)."""
    return np.asarray(jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, B)))


def oracle_test(key, K, L, B, debiased):
    """Brute force: the same permutations (module docstring: split(key, B)[b]), CKA by the NumPy oracle."""
    perms = _perms(key, B, K.shape[0])
    T = np_cka(K, L, debiased)
    null = np.array([np_cka(K, L[p][:, p], debiased) for p in perms])
    return T, null, (1 + np.sum(null >= T - 1e-12)) / (1 + B)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,B,shared", [(5, 199, 0.8), (12, 99, 0.3), (30, 59, 0.0)])
def test_cka_test_matches_brute_force(debiased, n, B, shared):
    X, Y = features(n, n, 3, 4, shared)
    K, L = X @ X.T, rbf(Y, 0.3)
    key = jax.random.key(7)
    T, null, p = oracle_test(key, K, L, B, debiased)
    res = cka_test(key, K, L, n_permutations=B, debiased=debiased)
    assert isinstance(res, CKATest) and res.n_permutations == B and res.debiased == debiased
    np.testing.assert_allclose(float(res.statistic), T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.null), null, rtol=1e-9, atol=1e-12)
    assert float(res.p_value) == pytest.approx(p, abs=1e-15)
    assert float(res.null_mean) == pytest.approx(null.mean(), abs=1e-12)
    assert float(res.null_sd) == pytest.approx(null.std(ddof=1), rel=1e-9)
    if n == 5:  # 120 permutations in all: identities among the 199 draws are ties and count as T_b >= T
        assert np.sum(np.abs(null - T) < 1e-12) >= 1
    # same key, same result; another key, other permutations
    again = cka_test(key, K, L, n_permutations=B, debiased=debiased)
    np.testing.assert_array_equal(np.asarray(again.null), np.asarray(res.null))
    other = cka_test(jax.random.key(8), K, L, n_permutations=B, debiased=debiased)
    assert not np.array_equal(np.asarray(other.null), np.asarray(res.null))


def test_cka_test_strong_dependence_gives_smallest_p():
    X, Y = features(3, 40, 5, 5, 3.0)
    res = cka_test(jax.random.key(0), X @ X.T, Y @ Y.T, n_permutations=99)
    assert float(res.p_value) == pytest.approx(1 / 100)


def test_cka_test_jit_vmap_dtype_and_chunks():
    X, Y = features(5, 16, 3, 3, 0.4)
    K, L = X @ X.T, rbf(Y, 0.5)
    key = jax.random.key(1)
    eager = cka_test(key, K, L, n_permutations=50)
    jitted = jax.jit(functools.partial(cka_test, n_permutations=50))(key, K, L)
    assert jitted.n_permutations == 50
    np.testing.assert_allclose(np.asarray(jitted.null), np.asarray(eager.null), rtol=1e-12)
    assert float(jitted.p_value) == float(eager.p_value)
    keys = jax.random.split(jax.random.key(2), 3)
    batched = jax.vmap(lambda k: cka_test(k, K, L, n_permutations=50))(keys)
    for i in range(3):
        one = cka_test(keys[i], K, L, n_permutations=50)
        np.testing.assert_allclose(np.asarray(batched.null[i]), np.asarray(one.null), rtol=1e-12)
        assert float(batched.p_value[i]) == float(one.p_value)
    r32 = cka_test(key, K.astype(np.float32), L.astype(np.float32), n_permutations=50)
    assert r32.statistic.dtype == r32.p_value.dtype == r32.null.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r32.null), np.asarray(eager.null), atol=1e-4)
    # chunking does not change the result (chunk = 1 vs all at once)
    from jaxcompare.similarity._cka import u_center
    from jaxcompare.similarity._permutation import permuted_inner

    A, Bm = u_center(jnp.asarray(K))[None], u_center(jnp.asarray(L))[None]
    np.testing.assert_allclose(permuted_inner(key, A, Bm, 50, 1), permuted_inner(key, A, Bm, 50, 50), rtol=1e-12)


def test_cka_test_errors():
    X, Y = features(1, 8, 3, 3)
    K, L = X @ X.T, Y @ Y.T
    with pytest.raises(TypeError, match="key"):
        cka_test(None, K, L)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        cka_test(0, K, L)
    with pytest.raises(ValueError, match="n_permutations must be >= 1"):
        cka_test(jax.random.key(0), K, L, n_permutations=0)
    with pytest.raises(TypeError, match="n_permutations must be an integer"):
        cka_test(jax.random.key(0), K, L, n_permutations=9.5)
    with pytest.raises(ValueError, match="K2 must be a kernel on the same N"):
        cka_test(jax.random.key(0), K, L[:5, :5])
    with pytest.raises(ValueError, match="CKA is undefined for K2"):
        cka_test(jax.random.key(0), K, np.ones((8, 8)))


@pytest.mark.slow
@pytest.mark.parametrize("debiased", [True, False])
def test_cka_test_p_values_uniform_under_independence(debiased):
    """200 independent data sets (n = 20, p = q = 30), B = 99 permutations each. Permutation p-values are uniform on
    {1/100, ..., 1}; randomizing within each step (p - U/100, U ~ U(0, 1)) makes them exactly U(0, 1) under the null,
    so the KS test at level 0.001 fails by chance with probability 0.001 per case."""
    B, n_draws = 99, 200

    def one(key):
        kx, ky, kt = jax.random.split(key, 3)
        X = jax.random.normal(kx, (20, 30))
        Y = jax.random.normal(ky, (20, 30))
        return cka_test(kt, X @ X.T, Y @ Y.T, n_permutations=B, debiased=debiased).p_value

    p = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), n_draws)))
    assert np.all((p >= 1 / (B + 1)) & (p <= 1))
    u = np.random.default_rng(12).uniform(size=n_draws)
    assert scipy.stats.kstest(p - u / (B + 1), "uniform").pvalue > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# kernel_similarity
# ----------------------------------------------------------------------------------------------------------------
N_PTS = 14


def tiny_cnn(key, n_classes=3):
    """conv 3x3 (4 channels, ReLU) -> conv 3x3 stride 2 (tanh) -> dense; inputs (N, 6, 6, 2) NHWC."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "c1": jax.random.normal(k1, (3, 3, 2, 4)) / 4.0,
        "c2": jax.random.normal(k2, (3, 3, 4, 4)) / 6.0,
        "w": jax.random.normal(k3, (16, n_classes)) / 4.0,
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def apply_fn(p, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn))
        h = jnp.tanh(jax.lax.conv_general_dilated(h, p["c2"], (2, 2), "VALID", dimension_numbers=dn))
        return h.reshape(h.shape[0], -1) @ p["w"]

    return apply_fn, params


@functools.cache
def _models():
    k = jax.random.split(jax.random.key(3), 4)
    f_mlp, p_a = mlp(k[0], d_in=72, width=9)
    _, p_b = mlp(k[1], d_in=72, width=9)
    f_cnn, p_c = tiny_cnn(k[2])
    flat = lambda p, x: f_mlp(p, x.reshape(x.shape[0], -1))  # noqa: E731
    x = jax.random.normal(k[3], (N_PTS, 6, 6, 2))
    return [(flat, p_a), (flat, p_b), (f_cnn, p_c)], x


@functools.cache
def _oracle_kernels():
    models, x = _models()
    return [oracle_kernels(f, p, x, x) for f, p in models]


def oracle_similarity(key, kernels, B, debiased):
    """CKA matrix and p-values (pair i < j: model j's points permuted with split(key, B)[b]) in NumPy."""
    m = len(kernels)
    n = kernels[0].shape[0]
    perms = _perms(key, B, n)
    c = np.ones((m, m))
    p = np.zeros((m, m))
    for i in range(m):
        for j in range(i, m):
            c[i, j] = c[j, i] = np_cka(kernels[i], kernels[j], debiased)
            null = np.array([np_cka(kernels[i], kernels[j][q][:, q], debiased) for q in perms])
            p[i, j] = p[j, i] = (1 + np.sum(null >= c[i, j] - 1e-12)) / (1 + B)
    return c, p


@pytest.mark.parametrize("kernel,debiased", [("trntk", True), ("trntk0", False), ("pntk0", True)])
def test_kernel_similarity_against_direct_kernels(kernel, debiased):
    models, x = _models()
    key = jax.random.key(4)
    B = 39
    res = kernel_similarity(key, models, x, kernel=kernel, n_permutations=B, debiased=debiased, names=["a", "b", "c"])
    assert isinstance(res, KernelSimilarity)
    assert res.kernel == kernel and res.names == ("a", "b", "c") and res.n_permutations == B
    oracle_name = {"trntk": "trntk", "trntk0": "trntk0", "pntk0": "pntk"}[kernel]
    Ks = [k[oracle_name] for k in _oracle_kernels()]
    c, p = oracle_similarity(key, Ks, B, debiased)
    np.testing.assert_allclose(np.asarray(res.cka), c, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(res.p_value), p)
    np.testing.assert_allclose(np.asarray(res.null_mean), np.asarray(res.null_mean).T)
    # each off-diagonal pair equals cka_test with the same key
    t = cka_test(key, Ks[0], Ks[2], n_permutations=B, debiased=debiased)
    assert float(res.p_value[0, 2]) == float(t.p_value)
    assert float(res.null_mean[0, 2]) == pytest.approx(float(t.null_mean), abs=1e-10)
    assert float(res.null_sd[2, 0]) == pytest.approx(float(t.null_sd), rel=1e-8)


@pytest.mark.slow
def test_kernel_similarity_options():
    models, x = _models()
    key = jax.random.key(5)
    base = kernel_similarity(key, models, x, kernel="trntk0", n_permutations=19)
    # a callable factory: the same kernel
    fac = kernel_similarity(key, models, x, kernel=lambda f: jc.trace_ntk(f, normalize=False), n_permutations=19)
    np.testing.assert_allclose(np.asarray(fac.cka), np.asarray(base.cka), rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(fac.p_value), np.asarray(base.p_value))
    # the eNTK is traced over classes: the trNTK⁰
    entk = kernel_similarity(key, models, x, kernel="entk", n_permutations=19)
    np.testing.assert_allclose(np.asarray(entk.cka), np.asarray(base.cka), rtol=1e-10)
    # tiled kernels (jaxcompare.batched): the same
    tiled = kernel_similarity(key, models, x, kernel="trntk0", n_permutations=19, block_size=5)
    np.testing.assert_allclose(np.asarray(tiled.cka), np.asarray(base.cka), rtol=1e-10)
    # a projection is passed to the factory: projected kernels approximate the exact ones
    proj = jc.random_projection(jax.random.key(6), 4000)
    pr = kernel_similarity(key, models, x, kernel="trntk", projection=proj, n_permutations=19)
    exact = kernel_similarity(key, models, x, kernel="trntk", n_permutations=19)
    if hasattr(jc.ntk, "KERNELS"):
        assert pr.kernel == "proj_trntk"
    np.testing.assert_allclose(np.asarray(pr.cka), np.asarray(exact.cka), atol=0.1)
    assert not np.allclose(np.asarray(pr.cka), np.asarray(exact.cka), atol=1e-8)
    seen = []

    def factory(f, projection=None):
        seen.append(projection)
        return jc.trace_ntk(f, projection=projection)

    kernel_similarity(key, models, x, kernel=factory, projection=proj, n_permutations=5)
    assert seen == [proj] * 3


def test_kernel_similarity_errors():
    models, x = _models()
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="models must be a list"):
        kernel_similarity(key, models[0][0], x)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_similarity(key, models[:1], x)
    with pytest.raises(TypeError, match=r"models\[1\] must be an \(apply_fn, params\) pair"):
        kernel_similarity(key, [models[0], (models[1][0],)], x)
    with pytest.raises(ValueError, match="kernel must be"):
        kernel_similarity(key, models, x, kernel="nope")
    with pytest.raises(TypeError, match="kernel must be a registry name"):
        kernel_similarity(key, models, x, kernel=3)
    with pytest.raises(ValueError, match="names must be a sequence of 3"):
        kernel_similarity(key, models, x, names=["a"])
    with pytest.raises(ValueError, match="N >= 4"):
        kernel_similarity(key, models, x[:3])
    with pytest.raises(ValueError, match="x must be finite"):
        kernel_similarity(key, models, x.at[0, 0, 0, 0].set(jnp.nan))
    # a model whose gradients do not depend on the input: its trNTK⁰ is constant
    const = (lambda p, xx: jnp.zeros((xx.shape[0], 3)) + p["b"][None, :], {"b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"CKA is undefined for the trNTK⁰ kernel of models\[2\] \(model 2\)"):
        kernel_similarity(key, [*models[:2], const], x, kernel="trntk0", n_permutations=5)
    with pytest.raises(ValueError, match="must be symmetric"):
        kernel_similarity(key, models, x, kernel=lambda f: lambda p, a, b=None: jnp.triu(jnp.ones((N_PTS,) * 2)))


def test_plot_similarity():
    models, x = _models()
    res = kernel_similarity(jax.random.key(0), models, x, kernel="trntk", n_permutations=9, names=["a", "b", "cnn"])
    fig = res.plot()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "cnn"]
    assert len(ax.texts) == 9 and "p=" in ax.texts[1].get_text()
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig, ax = plt.subplots()
    assert plot_similarity(res, ax=ax, annotate=False) is fig and len(ax.texts) == 0
    plt.close(fig)
    with pytest.raises(TypeError, match="result must come from kernel_similarity"):
        plot_similarity(np.eye(3))


def _cell_rgb(fig, ax, i, j):
    """The rendered colour (0..1) near a corner of cell (row i, column j), away from its text, read back from the
    drawn canvas."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    x, y = ax.transData.transform((j + 0.38, i + 0.38))
    return img[int(round(img.shape[0] - y)), int(round(x))]


@pytest.mark.parametrize("debiased", [True, False])
def test_plot_similarity_negative_values_and_masked_diagonal(debiased):
    import matplotlib.pyplot as plt

    c = np.array([[1.0, -0.6, 0.8], [-0.6, 1.0, 0.0], [0.8, 0.0, 1.0]])
    if not debiased:
        c = np.abs(c)  # a biased CKA is never negative
    res = KernelSimilarity(
        cka=jnp.asarray(c), p_value=jnp.full((3, 3), 0.001), null_mean=jnp.zeros((3, 3)),
        null_sd=jnp.full((3, 3), 0.05), kernel="trntk", label="trNTK", names=("a", "b", "c"), n_permutations=999,
        debiased=debiased,
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    plot_similarity(res, ax=ax)
    assert ax.images[0].get_clim() == ((-1.0, 1.0) if debiased else (0.0, 1.0))
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert [texts[(k, k)] for k in range(3)] == ["self"] * 3  # no self-test p-value on the diagonal
    assert texts[(0, 1)] == ("-0.60" if debiased else "0.60") + "\np=0.001"
    diag = _cell_rgb(fig, ax, 1, 1)
    assert np.ptp(diag) < 0.02 and 0.75 < diag.mean() < 0.95  # masked: light grey, not the colour of CKA = 1
    if debiased:  # diverging scale: negative is blue, zero is (near) white, positive is red
        neg, zero, pos = _cell_rgb(fig, ax, 0, 1), _cell_rgb(fig, ax, 1, 2), _cell_rgb(fig, ax, 0, 2)
        assert neg[2] > neg[0] + 0.2 and pos[0] > pos[2] + 0.2 and zero.min() > 0.9
    plt.close(fig)


def test_low_precision_and_extreme_scales():
    """bfloat16/float16 inputs are taken in float32 (a permutation test's tie window in bfloat16, 0.125, swallowed the
    whole null: p 0.93 for a related pair with p 0.001 in float32); linear CKA is scale-free at ×1e9 and ×1e-12 (its
    fourth powers of the scale overflowed and underflowed float32). Oracle: the float64 CKA of the same features."""
    kx, ky = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (60, 6), jnp.float32)
    Y = jnp.tanh(X @ jax.random.normal(ky, (6, 4), jnp.float32)) + 0.5 * jax.random.normal(ky, (60, 4))
    x64, y64 = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    want = float(cka(jnp.asarray(x64 @ x64.T), jnp.asarray(y64 @ y64.T)))
    for s in (1e9, 1e-12):
        Xs = (X * s).astype(jnp.float32)
        assert abs(float(linear_cka(Xs, Y)) - want) < 1e-4, s
    K1, K2 = X @ X.T, Y @ Y.T
    ref = cka_test(jax.random.key(3), K1, K2, n_permutations=199)
    for dt in (jnp.bfloat16, jnp.float16):
        low = cka_test(jax.random.key(3), K1.astype(dt), K2.astype(dt), n_permutations=199)
        assert low.statistic.dtype == jnp.float32, dt
        assert abs(float(low.p_value) - 1 / 200) < 1e-7 and abs(float(ref.p_value) - 1 / 200) < 1e-7, dt
        assert bool(jnp.isfinite(linear_cka(X.astype(dt), Y.astype(dt))))
