"""Kernel surrogates (kGLM): fit vs scikit-learn, attribution vs naive sums, faithfulness vs SciPy/NumPy, bad input.

Oracles: scikit-learn ``LogisticRegression`` (float64, lbfgs driven to tol 1e-10) on the same kernel-row features
with ``C = 1 / (l2 · N)``; NumPy for contributions, accuracies, Jaccard overlaps and least squares; SciPy's
``kendalltau`` and scikit-learn's ``IsotonicRegression``. Deterministic data (fixed seeds), no statistical tests.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from scipy.stats import kendalltau
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils.class_weight import compute_class_weight

import jaxcompare as jc

TIGHT = dict(tol=1e-8, max_iter=5000)


def _data(n=90, n_test=40, n_classes=3, seed=0):
    """RBF kernel rows of random points; labels from a noisy linear rule (not separable)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_test, 5))
    R = rng.normal(size=(5, n_classes))
    y = np.argmax(X @ R + 0.8 * rng.normal(size=(n + n_test, n_classes)), axis=1)
    sq = np.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
    K = np.exp(-sq / 10.0)
    return K[:n, :n], y[:n], K[n:, :n], y[n:]


def _sk_lr(K, y, l2, **kw):
    return LogisticRegression(C=1.0 / (l2 * K.shape[0]), tol=1e-10, max_iter=20000, **kw)


def _centered(z):
    z = np.asarray(z, np.float64)
    return z - z.mean(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ fit vs sklearn


@pytest.mark.parametrize("l2", [1e-2, 1e-3])
def test_softmax_matches_sklearn_multinomial(l2):
    K, y, Kt, yt = _data()
    model = jc.fit_kglm(K, y, loss="softmax", l2=l2, **TIGHT)
    assert bool(model.converged)
    sk = _sk_lr(K, y, l2).fit(K, y)
    ours = _centered(jc.kglm_logits(model, Kt))
    ref = _centered(sk.decision_function(Kt))
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(model.W), sk.coef_, atol=1e-5 * np.abs(sk.coef_).max())
    assert np.array_equal(np.argmax(ours, 1), sk.predict(Kt))
    np.testing.assert_allclose(np.asarray(jc.kglm_proba(model, Kt)), sk.predict_proba(Kt), atol=1e-5)
    # our optimum is at least as good as scikit-learn's for the documented objective
    n = K.shape[0]
    P = _softmax64(sk.decision_function(K))
    sk_obj = -np.mean(np.log(P[np.arange(n), y])) + 0.5 * l2 * np.sum(sk.coef_**2)
    assert float(model.objective) <= sk_obj + 1e-12
    assert float(model.objective) == pytest.approx(sk_obj, rel=1e-8)


def test_ovr_matches_sklearn_one_vs_rest():
    K, y, Kt, _ = _data(n_classes=4, seed=1)
    l2 = 3e-3
    model = jc.fit_kglm(K, y, loss="ovr", l2=l2, **TIGHT)
    assert bool(model.converged)
    sk = OneVsRestClassifier(_sk_lr(K, y, l2)).fit(K, y)
    ref = sk.decision_function(Kt)
    np.testing.assert_allclose(np.asarray(jc.kglm_logits(model, Kt)), ref, atol=1e-5 * np.abs(ref).max())
    # normalized one-vs-rest sigmoids, as SGDClassifier/OneVsRestClassifier.predict_proba
    np.testing.assert_allclose(np.asarray(jc.kglm_proba(model, Kt)), sk.predict_proba(Kt), atol=1e-6)


def test_ovr_balanced_weights_are_sgdclassifier_weights():
    """Class c's binary problem weights its positives by N / (C n_c) and the rest by 1 (SGDClassifier OvR)."""
    K, y, Kt, _ = _data(n=100, n_classes=3, seed=2)
    l2 = 1e-2
    model = jc.fit_kglm(K, y, loss="ovr", l2=l2, class_weight="balanced", **TIGHT)
    cw = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(np.asarray(model.class_weight), cw, rtol=1e-12)
    ours = np.asarray(jc.kglm_logits(model, Kt))
    for c in range(3):
        sw = np.where(y == c, cw[c], 1.0)
        ref = _sk_lr(K, y, l2).fit(K, (y == c).astype(int), sample_weight=sw).decision_function(Kt)
        np.testing.assert_allclose(ours[:, c], ref, atol=1e-5 * np.abs(ref).max())


def test_binary_ovr_is_one_logistic_regression():
    K, y, Kt, _ = _data(n_classes=2, seed=3)
    l2 = 1e-2
    model = jc.fit_kglm(K, y, loss="ovr", l2=l2, class_weight="balanced", **TIGHT)
    cw = compute_class_weight("balanced", classes=np.arange(2), y=y)
    sk = _sk_lr(K, y, l2).fit(K, y, sample_weight=cw[y])
    logits = np.asarray(jc.kglm_logits(model, Kt))
    ref = sk.decision_function(Kt)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(jc.kglm_proba(model, Kt)), sk.predict_proba(Kt), atol=1e-6)


def test_softmax_class_and_sample_weights_match_sklearn():
    K, y, Kt, _ = _data(seed=4)
    rng = np.random.default_rng(0)
    sw = rng.uniform(0.2, 2.0, size=y.shape[0])
    cw = np.array([1.0, 2.5, 0.7])
    l2 = 1e-2
    model = jc.fit_kglm(K, y, l2=l2, class_weight=cw, sample_weight=sw, **TIGHT)
    sk = _sk_lr(K, y, l2, class_weight=dict(enumerate(cw))).fit(K, y, sample_weight=sw)
    ref = _centered(sk.decision_function(Kt))
    np.testing.assert_allclose(_centered(jc.kglm_logits(model, Kt)), ref, atol=1e-5 * np.abs(ref).max())


def test_standardize_is_fit_on_kernel_over_its_std():
    K, y, Kt, _ = _data(seed=5)
    K0, Kt0 = 37.0 * K + 5.0, 37.0 * Kt + 5.0  # an "unnormalized" kernel
    s = np.std(K0)
    m_std = jc.fit_kglm(K0, y, standardize=True, l2=1e-2, **TIGHT)
    m_ref = jc.fit_kglm(K0 / s, y, standardize=False, l2=1e-2, **TIGHT)
    np.testing.assert_allclose(float(m_std.scale), s, rtol=1e-12)
    # the scale is folded into W: raw test kernel rows give the logits of the standardized fit
    np.testing.assert_allclose(
        np.asarray(jc.kglm_logits(m_std, Kt0)), np.asarray(jc.kglm_logits(m_ref, Kt0 / s)), atol=1e-5
    )


# ------------------------------------------------------------------------------------- transforms, dtype, flags


def test_float32_kept_and_close_to_float64():
    K, y, Kt, _ = _data()
    m64 = jc.fit_kglm(K, y, l2=1e-2, tol=1e-6)
    m32 = jc.fit_kglm(K.astype(np.float32), y, l2=1e-2, tol=1e-4)
    assert m32.W.dtype == jnp.float32 and m32.b.dtype == jnp.float32
    z32 = jc.kglm_logits(m32, Kt.astype(np.float32))
    assert z32.dtype == jnp.float32
    z64 = np.asarray(jc.kglm_logits(m64, Kt))
    np.testing.assert_allclose(_centered(z32), _centered(z64), atol=2e-3 * np.abs(z64).max())


@pytest.mark.parametrize("loss", ["softmax", "ovr"])
def test_jit_equals_eager_and_deterministic(loss):
    K, y, Kt, _ = _data()
    eager = jc.fit_kglm(K, y, loss=loss, l2=1e-2)
    again = jc.fit_kglm(K, y, loss=loss, l2=1e-2)
    np.testing.assert_array_equal(np.asarray(eager.W), np.asarray(again.W))  # same inputs, same model
    jitted = jax.jit(lambda k, lab: jc.fit_kglm(k, lab, loss=loss, l2=1e-2, n_classes=3))(K, y)
    np.testing.assert_allclose(np.asarray(jitted.W), np.asarray(eager.W), rtol=1e-9, atol=1e-12)
    assert int(jitted.n_iter) == int(eager.n_iter)


def test_vmap_over_l2_equals_loop():
    K, y, _, _ = _data()
    l2s = jnp.array([1e-1, 1e-2, 1e-3])
    batched = jax.vmap(lambda l2: jc.fit_kglm(K, y, l2=l2, n_classes=3))(l2s)
    for i, l2 in enumerate(np.asarray(l2s)):
        single = jc.fit_kglm(K, y, l2=float(l2))
        # batched and unbatched kernel products round differently, so the paths agree to the solver tolerance
        np.testing.assert_allclose(np.asarray(batched.W[i]), np.asarray(single.W), atol=1e-6)
        assert bool(batched.converged[i]) and abs(float(batched.objective[i]) - float(single.objective)) < 1e-10


def test_unconverged_fit_is_flagged_or_raises():
    K, y, _, _ = _data()
    with pytest.warns(jc.KGLMConvergenceWarning, match="did not converge"):
        m = jc.fit_kglm(K, y, l2=1e-4, max_iter=3, throw=False)
    assert not bool(m.converged) and int(m.n_iter) == 3 and float(m.grad_norm) > 1e-5
    assert int(m.result) == 1  # Result.max_steps_reached
    with pytest.warns(jc.KGLMConvergenceWarning, match="stalled"):
        m = jc.fit_kglm(K, y, l2=1e-2, tol=1e-300, throw=False)
    assert not bool(m.converged) and int(m.n_iter) < 1000 and int(m.result) == 2  # Result.stalled
    with pytest.raises(RuntimeError, match="did not converge"):
        jc.fit_kglm(K, y, l2=1e-4, max_iter=3)  # throw=True is the default (one convention for every solver)
    with pytest.raises(RuntimeError, match="stalled"):
        jc.fit_kglm(K, y, l2=1e-2, tol=1e-300, throw=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bool(jc.fit_kglm(K, y, l2=1e-2).converged)


def test_result_is_a_pytree():
    K, y, _, _ = _data()
    m = jc.fit_kglm(K, y, loss="ovr", l2=1e-2)
    leaves, tree = jax.tree_util.tree_flatten(m)
    m2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert m2.loss == "ovr" and m2.n_classes == 3 and m2.n_features == K.shape[1]


def test_rectangular_kernel_against_anchor_subset():
    """Rows = fitting points, columns = a subset of anchors: the same as logistic regression on those columns."""
    K, y, Kt, _ = _data()
    cols = np.arange(0, K.shape[1], 3)
    m = jc.fit_kglm(K[:, cols], y, l2=1e-2, **TIGHT)
    sk = _sk_lr(K, y, 1e-2).fit(K[:, cols], y)
    ref = _centered(sk.decision_function(Kt[:, cols]))
    np.testing.assert_allclose(_centered(jc.kglm_logits(m, Kt[:, cols])), ref, atol=1e-5 * np.abs(ref).max())


# -------------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_have_clear_errors():
    K, y, Kt, _ = _data()
    with pytest.raises(ValueError, match="2 dimensions"):
        jc.fit_kglm(K[0], y)
    with pytest.raises(ValueError, match="length 90"):
        jc.fit_kglm(K, y[:-1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        jc.fit_kglm(K, np.where(y == 0, 3, y), n_classes=3)
    with pytest.raises(ValueError, match="finite"):
        jc.fit_kglm(np.where(np.eye(90) > 0, np.nan, K), y)
    with pytest.raises(ValueError, match="single class"):
        jc.fit_kglm(K, np.zeros(90, int))
    with pytest.raises(ValueError, match="no training points"):
        jc.fit_kglm(K, y, n_classes=4, class_weight="balanced")
    with pytest.raises(ValueError, match="l2"):
        jc.fit_kglm(K, y, l2=0.0)
    with pytest.raises(ValueError, match="loss"):
        jc.fit_kglm(K, y, loss="hinge")
    with pytest.raises(ValueError, match="integer"):
        jc.fit_kglm(K, y + 0.5)
    with pytest.raises(ValueError, match="sample_weight"):
        jc.fit_kglm(K, y, sample_weight=-np.ones(90))
    with pytest.raises(ValueError, match="non-constant"):
        jc.fit_kglm(np.ones((90, 90)), y, standardize=True)
    m = jc.fit_kglm(K, y, l2=1e-2)
    with pytest.raises(ValueError, match="one column per training point"):
        jc.kglm_logits(m, Kt[:, :-1])
    with pytest.raises(ValueError, match="finite"):
        jc.kglm_logits(m, np.full_like(Kt, np.inf))
    with pytest.raises(TypeError, match="KGLM"):
        jc.kglm_logits(np.zeros((3, 90)), Kt)


# ---------------------------------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("loss", ["softmax", "ovr"])
def test_attributions_sum_to_logits_and_topk_is_naive_argsort(loss):
    K, y, Kt, _ = _data()
    m = jc.fit_kglm(K, y, loss=loss, l2=1e-2)
    W, b = np.asarray(m.W, np.float64), np.asarray(m.b, np.float64)
    logits = np.asarray(jc.kglm_logits(m, Kt))
    pred = logits.argmax(1)
    A = np.asarray(jc.contributions(m, Kt))
    naive = W[pred] * Kt + b[pred][:, None] / K.shape[1]
    np.testing.assert_allclose(A, naive, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(A.sum(1), logits[np.arange(len(pred)), pred], rtol=1e-10, atol=1e-12)
    k = 7
    top = jc.attribute(m, Kt, k=k)
    np.testing.assert_array_equal(np.asarray(top.classes), pred)
    np.testing.assert_allclose(np.asarray(top.logits), logits[np.arange(len(pred)), pred], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(top.bias_share), b[pred] / K.shape[1], rtol=1e-12)
    ref_idx = np.argsort(-naive, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.asarray(top.indices), ref_idx)
    np.testing.assert_allclose(np.asarray(top.values), np.take_along_axis(naive, ref_idx, 1), rtol=1e-12)
    neg = jc.attribute(m, Kt, k=k, order="negative")
    np.testing.assert_array_equal(np.asarray(neg.indices), np.argsort(naive, axis=1, kind="stable")[:, :k])
    ab = jc.attribute(m, Kt, k=k, order="abs")
    np.testing.assert_array_equal(np.asarray(ab.indices), np.argsort(-np.abs(naive), axis=1, kind="stable")[:, :k])


def test_attribution_for_given_and_all_classes():
    K, y, Kt, yt = _data()
    m = jc.fit_kglm(K, y, l2=1e-2)
    logits = np.asarray(jc.kglm_logits(m, Kt))
    T = Kt.shape[0]
    true_cls = jc.attribute(m, Kt, k=3, classes=yt)
    np.testing.assert_allclose(np.asarray(true_cls.logits), logits[np.arange(T), yt], rtol=1e-10)
    one = jc.attribute(m, Kt, k=3, classes=2)
    np.testing.assert_allclose(np.asarray(one.logits), logits[:, 2], rtol=1e-10)
    allc = jc.attribute(m, Kt, k=3, classes="all")
    assert allc.indices.shape == (T, 3, 3) and allc.values.shape == (T, 3, 3)
    np.testing.assert_allclose(np.asarray(allc.logits), logits, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(allc.indices[:, 2]), np.asarray(one.indices))
    with pytest.raises(ValueError, match="k must be <="):
        jc.attribute(m, Kt, k=K.shape[1] + 1)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        jc.attribute(m, Kt, classes=np.full(T, 5))
    with pytest.raises(ValueError, match="one column per training point"):
        jc.attribute(m, Kt[:, 1:])


def test_attribution_float32_and_jit():
    K, y, Kt, _ = _data()
    m = jc.fit_kglm(K.astype(np.float32), y, l2=1e-2, tol=1e-4)
    top = jc.attribute(m, Kt.astype(np.float32), k=4)
    assert top.values.dtype == jnp.float32
    jitted = jax.jit(lambda mm, kk: jc.attribute(mm, kk, k=4))(m, Kt.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(jitted.indices), np.asarray(top.indices))
    np.testing.assert_allclose(np.asarray(jitted.values), np.asarray(top.values), rtol=1e-6)


# --------------------------------------------------------------------------------------------------- faithfulness


def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _logit_pair(T=200, C=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, T)
    base = rng.normal(size=(T, C)) + 2.0 * np.eye(C)[y]
    zn = base + 0.5 * rng.normal(size=(T, C))
    zs = 1.7 * base + 0.8 * rng.normal(size=(T, C)) + 3.0  # other scale, shifted rows
    return zn, zs, y


def test_faithfulness_matches_numpy_and_scipy():
    zn, zs, y = _logit_pair()
    f = jc.faithfulness(zn, zs, y)
    pn, ps = zn.argmax(1), zs.argmax(1)
    acc_n, acc_s = np.mean(pn == y), np.mean(ps == y)
    np.testing.assert_allclose(float(f.tad), acc_s - acc_n, atol=1e-12)
    np.testing.assert_allclose(float(f.network_accuracy), acc_n, atol=1e-12)
    en, es = set(np.flatnonzero(pn != y)), set(np.flatnonzero(ps != y))
    np.testing.assert_allclose(float(f.r_miss), len(en & es) / len(en | es), atol=1e-12)
    tau = kendalltau(_softmax64(zn)[np.arange(len(y)), y], _softmax64(zs)[np.arange(len(y)), y]).statistic
    np.testing.assert_allclose(float(f.kendall_tau), tau, atol=1e-10)
    assert f.r2 is None and set(f.as_dict()) >= {"tad", "kendall_tau", "r_miss", "r2"}


def test_faithfulness_r2_links_match_least_squares_and_isotonic():
    zn, zs, y = _logit_pair(seed=1)
    tn, ts = _centered(zn).ravel(), _centered(zs).ravel()
    a, c = np.polyfit(ts, tn, 1)
    r2_lin = 1 - np.sum((tn - (a * ts + c)) ** 2) / np.sum((tn - tn.mean()) ** 2)
    np.testing.assert_allclose(float(jc.faithfulness(zn, zs, y, r2="linear").r2), r2_lin, atol=1e-10)
    iso = IsotonicRegression().fit(ts, tn).predict(ts)
    r2_iso = 1 - np.sum((tn - iso) ** 2) / np.sum((tn - tn.mean()) ** 2)
    np.testing.assert_allclose(float(jc.faithfulness(zn, zs, y, r2="isotonic").r2), r2_iso, atol=1e-10)
    # an anti-monotone surrogate gets no credit from the monotone linear link
    assert float(jc.faithfulness(zn, -zn, y, r2="linear").r2) == pytest.approx(0.0, abs=1e-12)


def test_faithfulness_given_probabilities_and_edge_cases():
    zn, zs, y = _logit_pair(seed=2)
    probs = _softmax64(zs) ** 2
    probs /= probs.sum(1, keepdims=True)
    f = jc.faithfulness(zn, zs, y, surrogate_probs=probs)
    tau = kendalltau(_softmax64(zn)[np.arange(len(y)), y], probs[np.arange(len(y)), y]).statistic
    np.testing.assert_allclose(float(f.kendall_tau), tau, atol=1e-10)
    # both perfect: no errors on either side, R_Miss = 1 by convention, TAD = 0
    perfect = 5.0 * np.eye(4)[y] + 0.1 * _logit_pair(seed=3)[0]
    g = jc.faithfulness(perfect, perfect + 0.01, y)
    assert float(g.r_miss) == 1.0 and float(g.tad) == 0.0
    jitted = jax.jit(lambda a, b, c: jc.faithfulness(a, b, c, r2="linear"))(zn, zs, y)
    eager = jc.faithfulness(zn, zs, y, r2="linear")
    for k, v in eager.as_dict().items():
        np.testing.assert_allclose(jitted.as_dict()[k], v, rtol=1e-12)
    f32 = jc.faithfulness(zn.astype(np.float32), zs.astype(np.float32), y)
    assert f32.tad.dtype == jnp.float32
    with pytest.raises(ValueError, match="shape"):
        jc.faithfulness(zn, zs[:, :3], y)
    with pytest.raises(ValueError, match="length"):
        jc.faithfulness(zn, zs, y[:-1])
    with pytest.raises(ValueError, match="r2"):
        jc.faithfulness(zn, zs, y, r2="cubic")
    with pytest.raises(ValueError, match="finite"):
        jc.faithfulness(zn, np.full_like(zs, np.nan), y)
    with pytest.raises(ValueError, match="undefined"):  # a constant surrogate has no ranking
        jc.faithfulness(zn, np.zeros_like(zs), y)
    # an underflowed probability of the correct class stays finite (and ranks lowest)
    p0 = _softmax64(zs)
    p0[0] = np.eye(4)[(y[0] + 1) % 4]
    assert np.isfinite(float(jc.faithfulness(zn, zs, y, surrogate_probs=p0).kendall_tau))


def test_faithfulness_and_attribution_vmap_equal_loops():
    zn, zs, y = _logit_pair(T=60, seed=4)
    stack = np.stack([zs, 0.5 * zs + 1.0, zn + 0.3 * zs])
    batched = jax.vmap(lambda s: jc.faithfulness(zn, s, y))(stack)
    for i in range(3):
        single = jc.faithfulness(zn, stack[i], y)
        for k, v in single.as_dict().items():
            if v is not None:
                np.testing.assert_allclose(float(getattr(batched, k)[i]), v, rtol=1e-12)
    K, yk, Kt, _ = _data()
    m = jc.fit_kglm(K, yk, l2=1e-2)
    kts = np.stack([Kt, 0.5 * Kt])
    tops = jax.vmap(lambda kk: jc.attribute(m, kk, k=3))(kts)
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(tops.indices[i]), np.asarray(jc.attribute(m, kts[i], k=3).indices))


def test_faithfulness_ranks_float32_confident_points_like_float64():
    # margins of 10-30 logits: float32 softmax probabilities (and log_softmax) of the correct class round to
    # exactly 1 (0) and tie; the float64 oracle below writes log p_y = -log1p(sum_{j != y} exp(z_j - z_y))
    rng = np.random.default_rng(0)
    T, C = 300, 3
    y = rng.integers(0, C, T)
    zn = rng.normal(size=(T, C)) * 2
    zn[np.arange(T), y] += rng.uniform(10, 30, T)
    zs = zn + rng.normal(size=(T, C)) * 3
    zn32, zs32 = zn.astype(np.float32), zs.astype(np.float32)

    def logp(z):
        d = z.astype(np.float64) - z[np.arange(T), y].astype(np.float64)[:, None]
        d[np.arange(T), y] = -np.inf
        return -np.log1p(np.exp(d).sum(1))

    want = scipy.stats.kendalltau(logp(zn32), logp(zs32)).statistic
    got = jc.faithfulness(zn32, zs32, y)
    assert got.kendall_tau.dtype == np.float32
    assert abs(float(got.kendall_tau) - want) < 1e-6
    sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    pn, ps = sm(zn).astype(np.float32), sm(zs).astype(np.float32)
    assert np.mean(pn[np.arange(T), y] == 1.0) > 0.5  # the saturation the fix is about
    got_p = jc.faithfulness(zn32, zs32, y, network_probs=pn, surrogate_probs=ps)
    assert abs(float(got_p.kendall_tau) - want) < 1e-3  # probabilities carry float32 rounding of the small terms


def test_throw_is_a_yes_no_option():
    """throw="False" raised (a non-empty string is true) and throw=None meant False: booleans only."""
    F = jax.random.normal(jax.random.key(0), (12, 3))
    y = jnp.argmax(F, axis=1)
    for bad in ("False", None, 0):
        with pytest.raises(TypeError, match="throw must be True or False"):
            jc.fit_kglm(F @ F.T, y, throw=bad)
    s = jax.random.normal(jax.random.key(1), (4, 40))
    with pytest.raises(TypeError, match="throw must be True or False"):
        jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=jnp.arange(2), reference=jnp.arange(2, 4), throw="no")


def _exact_tie_key(z, y):
    """Oracle of the rank of p_y: -Σ_{j≠y} e^{z_j − z_y} summed over the sorted gaps in Python floats (equal
    multisets of gaps, as for logits that are permutations of each other, give exactly equal keys)."""
    return np.array(
        [
            -sum(np.exp(v) for v in sorted(float(z[i, j] - z[i, y[i]]) for j in range(z.shape[1]) if j != y[i]))
            for i in range(len(y))
        ]
    )


def test_tau_k_ties_and_saturated_margins():
    """τ_K ranks the correct-class probability through its log-odds, summed in sorted order: equal probabilities
    tie (integer logits; the summation order broke ties: τ −0.667 for −0.548), and margins beyond float32's
    exp range (~88) still rank (every point tied and τ was undefined). Oracles: SciPy's τ-b of exact-tie keys; the
    float64 log-odds (scipy.special.logsumexp)."""
    from scipy.special import logsumexp

    for seed in range(3):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 5, 60)  # five classes: four gaps, whose float sum depends on their order
        zn, zs = rng.integers(0, 4, (60, 5)).astype(np.float32), rng.integers(0, 4, (60, 5)).astype(np.float32)
        want = kendalltau(_exact_tie_key(zn, y), _exact_tie_key(zs, y)).statistic
        assert abs(float(jc.faithfulness(zn, zs, y).kendall_tau) - want) < 1e-6, seed
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 50)
    base = rng.normal(size=(50, 3))
    zn = (base + 4.0 * np.eye(3)[y]) * 60.0  # margins ~200: every network probability is 1 in float32
    zs = base + 2.0 * np.eye(3)[y] + 0.3 * rng.normal(size=(50, 3))

    def log_odds(z):
        other = np.where(np.eye(3)[y] > 0, -np.inf, z - z[np.arange(50), y][:, None])
        return -logsumexp(other, axis=1)

    want = kendalltau(log_odds(zn), log_odds(zs)).statistic
    got = jc.faithfulness(jnp.asarray(zn, jnp.float32), jnp.asarray(zs, jnp.float32), y).kendall_tau
    assert abs(float(got) - want) < 1e-6


def test_numbers_given_as_strings_or_booleans_are_refused():
    """l2="1e-3" was passed on to jax (a raw error from inside its jit); level="0.05" was parsed silently and a
    threshold of True read as 1: real-number parameters take numbers only."""
    F = jax.random.normal(jax.random.key(0), (12, 3))
    y = jnp.argmax(F, axis=1)
    for kw in (dict(l2="1e-3"), dict(tol="1e-6"), dict(l2=True)):
        with pytest.raises(TypeError, match="must be a real number"):
            jc.fit_kglm(F @ F.T, y, **kw)
    a, b = jax.random.normal(jax.random.key(1), (50,)), jax.random.normal(jax.random.key(2), (50,))
    with pytest.raises(TypeError, match="level must be a real number"):
        jc.alpha_hat(a, b, level="0.05")


def test_balanced_weights_count_sample_weights_like_sklearn():
    """With sample weights, "balanced" counts each class's weight (scikit-learn's compute_class_weight with
    sample_weight, as LogisticRegression uses it): a zero weight is a point left out."""
    K, y, Kt, _ = _data(seed=6)
    sw = np.random.default_rng(1).uniform(0.1, 3.0, size=y.shape[0])
    sw[y == 2] *= 4.0  # weighted counts far from the unweighted ones
    l2 = 1e-2
    model = jc.fit_kglm(K, y, l2=l2, class_weight="balanced", sample_weight=sw, **TIGHT)
    cw = compute_class_weight("balanced", classes=np.arange(3), y=y, sample_weight=sw)
    np.testing.assert_allclose(np.asarray(model.class_weight), cw, rtol=1e-12)
    sk = _sk_lr(K, y, l2, class_weight="balanced").fit(K, y, sample_weight=sw)
    ref = _centered(sk.decision_function(Kt))
    np.testing.assert_allclose(_centered(jc.kglm_logits(model, Kt)), ref, atol=1e-5 * np.abs(ref).max())
    keep = np.arange(y.shape[0]) % 3 != 0
    zero = jc.fit_kglm(K, y, l2=l2, class_weight="balanced", sample_weight=keep.astype(float), **TIGHT)
    np.testing.assert_allclose(
        np.asarray(zero.class_weight), compute_class_weight("balanced", classes=np.arange(3), y=y[keep]), rtol=1e-12
    )
    with pytest.raises(ValueError, match="positive sample_weight"):
        jc.fit_kglm(K, y, class_weight="balanced", sample_weight=(y != 1).astype(float))


def test_string_labels_and_half_precision_kernels():
    """String labels get an error saying how to encode them (was a raw JAX error); float16/bfloat16 kernels are
    fitted in float32 (they stalled at a gradient their objective cannot resolve), close to the float32 fit."""
    K, y, Kt, _ = _data(seed=7)
    with pytest.raises(TypeError, match="return_inverse"):
        jc.fit_kglm(K, np.array(["cat", "dog", "eel"])[y])
    with pytest.raises(TypeError, match="integer class labels"):
        jc.fit_kglm(K, [str(v) for v in y])
    K32 = np.asarray(K, np.float32)
    ref = jc.fit_kglm(K32, y, l2=1e-2)
    for dt in (jnp.float16, jnp.bfloat16):
        Kh = jnp.asarray(K32, dt)
        m = jc.fit_kglm(Kh, y, l2=1e-2)
        assert m.W.dtype == jnp.float32 and bool(m.converged)
        # the oracle: the float32 fit on the same rounded kernel
        m32 = jc.fit_kglm(np.asarray(Kh.astype(jnp.float32)), y, l2=1e-2)
        np.testing.assert_allclose(np.asarray(m.W), np.asarray(m32.W), rtol=0, atol=0)
        agree = np.mean(np.argmax(jc.kglm_logits(m, Kt), 1) == np.argmax(jc.kglm_logits(ref, Kt), 1))
        assert agree >= 0.9


def test_surrogate_table_takes_pytree_inputs():
    """x_train/x_test as {"tokens", "mask"} were refused (check_array of a dict). Oracle: the same model reading one
    packed array gives the same table."""
    rng = np.random.default_rng(0)
    n, length, vocab = 36, 5, 9
    tokens, mask = rng.integers(0, vocab, (n, length)), (rng.random((n, length)) > 0.3).astype(np.float64)
    p = {"emb": rng.standard_normal((vocab, 4)), "out": rng.standard_normal((4, 3))}

    def tree_fn(p, x):
        return jnp.tanh((p["emb"][x["tokens"]] * x["mask"][..., None]).sum(1)) @ p["out"]

    def packed_fn(p, xp):
        return tree_fn(p, {"tokens": xp[:, :length].astype(jnp.int32), "mask": xp[:, length:]})

    y = np.asarray(jnp.argmax(tree_fn(p, {"tokens": tokens, "mask": mask}), 1))
    tree = lambda s: {"tokens": tokens[s], "mask": mask[s]}  # noqa: E731
    packed = np.concatenate([tokens, mask], axis=1)
    tr, te = slice(0, 24), slice(24, n)
    a = jc.surrogate_table(None, tree_fn, p, tree(tr), y[tr], tree(te), y[te], kernels=("trntk",), progress_bar=False)
    b = jc.surrogate_table(None, packed_fn, p, packed[tr], y[tr], packed[te], y[te], kernels=("trntk",),
                           progress_bar=False)  # fmt: skip
    for ra, rb in zip(a.rows, b.rows):
        assert (ra.accuracy, ra.tad, ra.kendall_tau) == pytest.approx((rb.accuracy, rb.tad, rb.kendall_tau), abs=1e-9)
    with pytest.raises(ValueError, match="x_train and x_test must have the same structure"):
        jc.surrogate_table(None, tree_fn, p, tree(tr), y[tr], packed[te], y[te], kernels=("trntk",), progress_bar=False)
