"""Metrics against scikit-learn / SciPy / direct NumPy oracles (float64), plus jit/vmap/dtype and bad input."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import sklearn.calibration
import sklearn.metrics
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcompare as jc
from jaxcompare.metrics._kendall import _count_inversions


def _probs(rng, n, C, temp=1.0):
    logits = rng.normal(size=(n, C)) * temp
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# accuracy, churn
# ----------------------------------------------------------------------------------------------------------------
def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    p = _probs(rng, 300, 4)
    y = rng.integers(0, 4, 300)
    want = sklearn.metrics.accuracy_score(y, p.argmax(1))
    assert float(jc.accuracy(p, y)) == pytest.approx(want, abs=1e-15)
    assert float(jc.accuracy(p.argmax(1), y)) == pytest.approx(want, abs=1e-15)
    gap = rng.normal(size=300)
    yb = rng.integers(0, 2, 300)
    assert float(jc.accuracy(gap > 0, yb)) == pytest.approx(np.mean((gap > 0) == yb), abs=1e-15)
    assert float(jc.accuracy(jc.metrics.binary_probs(gap), yb)) == pytest.approx(np.mean((gap > 0) == yb), abs=1e-15)
    p32 = p.astype(np.float32)
    assert jc.accuracy(p32, y).dtype == jnp.float32
    # vmap over models == loop
    ps = np.stack([_probs(rng, 300, 4) for _ in range(3)])
    np.testing.assert_allclose(
        np.asarray(jax.vmap(jc.accuracy, in_axes=(0, None))(ps, y)), [np.mean(q.argmax(1) == y) for q in ps], atol=1e-15
    )


def test_churn_rejects_scores_of_different_class_counts():
    a, b = np.ones((10, 3)), np.ones((10, 2))
    with pytest.raises(ValueError, match="a has 3 columns .* but b has 2"):
        jc.churn(a, b)
    with pytest.raises(ValueError, match=r"b must lie in \[0, 3\)"):
        jc.churn(a, np.full(10, 3))  # labels outside the other model's classes
    assert float(jc.churn(a, np.zeros(10, int))) == 0.0  # argmax of ties is class 0


def test_churn_pairwise_and_ensemble():
    rng = np.random.default_rng(1)
    K, n = 5, 200
    gaps = rng.normal(size=(K, n)) + rng.normal(size=n)[None]
    labels = (gaps > 0).astype(int)
    want = np.array([[np.mean(labels[i] != labels[j]) for j in range(K)] for i in range(K)])
    np.testing.assert_allclose(np.asarray(jc.pairwise_churn(labels)), want, atol=1e-15)
    assert float(jc.churn(labels[0], labels[1])) == pytest.approx(want[0, 1], abs=1e-15)
    probs = np.stack([_probs(rng, n, 3) for _ in range(K)])
    lab3 = probs.argmax(-1)
    want3 = np.array([[np.mean(lab3[i] != lab3[j]) for j in range(K)] for i in range(K)])
    np.testing.assert_allclose(np.asarray(jc.pairwise_churn(probs)), want3, atol=1e-15)
    assert float(jc.churn(probs[0], probs[2])) == pytest.approx(want3[0, 2], abs=1e-15)
    # against the ensemble: sign of the mean gap / argmax of the mean probabilities
    ens = jc.ensemble_label(gaps)
    np.testing.assert_array_equal(np.asarray(ens), (gaps.mean(0) > 0).astype(int))
    assert float(jc.churn(labels[0], ens)) == pytest.approx(np.mean(labels[0] != (gaps.mean(0) > 0)), abs=1e-15)
    np.testing.assert_array_equal(np.asarray(jc.ensemble_label(probs)), probs.mean(0).argmax(-1))


# ----------------------------------------------------------------------------------------------------------------
# ECE
# ----------------------------------------------------------------------------------------------------------------
def ece_oracle(p, y, n_bins=15, binning="uniform"):
    """Direct NumPy ECE with explicit bins (torchmetrics convention: [k/B, (k+1)/B), 1.0 in the last bin)."""
    conf, pred = p.max(1), p.argmax(1)
    hit = (pred == y).astype(float)
    return _binned(conf, hit, n_bins, binning)


def _binned(conf, hit, n_bins, binning):
    n = conf.size
    if binning == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)
        b = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, n_bins - 1)
    else:
        order = np.argsort(conf, kind="stable")
        b = np.empty(n, int)
        b[order] = np.arange(n) * n_bins // n
    total = 0.0
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            total += sel.sum() / n * abs(hit[sel].mean() - conf[sel].mean())
    return total


@pytest.mark.parametrize("binning", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_oracle(binning, n_bins):
    rng = np.random.default_rng(2)
    p = _probs(rng, 500, 3, temp=2.0)
    y = rng.integers(0, 3, 500)
    got = float(jc.ece(p, y, n_bins=n_bins, binning=binning))
    assert got == pytest.approx(ece_oracle(p, y, n_bins, binning), abs=1e-13)


def test_ece_binary_against_sklearn_calibration_curve():
    """Binary classwise ECE for class 1 equals the |frac_pos - mean_pred| weighted over sklearn's uniform bins."""
    rng = np.random.default_rng(3)
    gap = rng.normal(0, 3, size=800)
    y = (rng.random(800) < 1 / (1 + np.exp(-0.7 * gap))).astype(int)
    p = np.asarray(jc.metrics.binary_probs(gap))
    edges = np.linspace(0, 1, 11)
    # sklearn's calibration_curve drops empty bins and does not return counts, so rebuild the counts with its bins
    b = np.clip(np.searchsorted(edges[1:-1], p[:, 1], side="right"), 0, 9)
    frac, mean = sklearn.calibration.calibration_curve(y, p[:, 1], n_bins=10, strategy="uniform")
    counts = np.bincount(b, minlength=10)
    counts = counts[counts > 0]
    ece1 = np.sum(counts / 800 * np.abs(frac - mean))
    ece0 = _binned(p[:, 0], (y == 0).astype(float), 10, "uniform")
    got = float(jc.ece(p, y, n_bins=10, classwise=True))
    assert got == pytest.approx((ece0 + ece1) / 2, abs=1e-12)


def test_ece_conventions_and_classwise():
    # a confidence of exactly 1.0 goes to the last bin, 0.5 with B=2 to the upper bin [0.5, 1]
    p = np.array([[0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    y = np.array([1, 1, 0])
    rb = jc.metrics.reliability_bins(p, y, n_bins=2)
    np.testing.assert_array_equal(np.asarray(rb.count), [0, 3])
    assert float(jc.ece(p, y, n_bins=2)) == pytest.approx(abs(1 / 3 - (1 + 0.5 + 0.8) / 3), abs=1e-15)
    # classwise: mean over classes of the binned error of p[:, k] vs [y == k]
    rng = np.random.default_rng(4)
    p = _probs(rng, 400, 4)
    y = rng.integers(0, 4, 400)
    want = np.mean([_binned(p[:, k], (y == k).astype(float), 15, "uniform") for k in range(4)])
    assert float(jc.ece(p, y, classwise=True)) == pytest.approx(want, abs=1e-13)
    # reliability bins reproduce the ECE
    rb = jc.metrics.reliability_bins(p, y)
    e = float(np.sum(np.asarray(rb.count) * np.abs(np.asarray(rb.accuracy) - np.asarray(rb.confidence))) / 400)
    assert e == pytest.approx(float(jc.ece(p, y)), abs=1e-13)
    # perfectly calibrated by construction in each bin: ECE 0
    p = np.array([[0.25, 0.75]] * 4)
    assert float(jc.ece(p, np.array([1, 1, 1, 0]))) == pytest.approx(0.0, abs=1e-15)


def test_ece_jit_vmap_dtype():
    rng = np.random.default_rng(5)
    ps = np.stack([_probs(rng, 200, 3) for _ in range(4)])
    y = rng.integers(0, 3, 200)
    loop = [ece_oracle(q, y) for q in ps]
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda q: jc.ece(q, y))(ps)), loop, atol=1e-13)
    assert float(jax.jit(lambda q: jc.ece(q, y, binning="quantile"))(ps[0])) == pytest.approx(
        ece_oracle(ps[0], y, 15, "quantile"), abs=1e-13
    )
    e32 = jc.ece(ps[0].astype(np.float32), y)
    assert e32.dtype == jnp.float32 and float(e32) == pytest.approx(loop[0], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Kendall tau-b
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(2, 10**9), (7, 3), (100, 5), (100, 10**9), (3001, 4), (3001, 10**9), (3001, 30)])
def test_kendall_tau_matches_scipy(n, k):
    rng = np.random.default_rng(n + k)
    x = rng.integers(0, k, n).astype(float)
    y = rng.integers(0, k, n).astype(float) + 0.3 * x
    if n == 2:
        x, y = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    want = scipy.stats.kendalltau(x, y)
    assert float(jc.kendall_tau(x, y)) == pytest.approx(want.statistic, abs=1e-12)
    if n > 2:
        res = jc.kendall_tau_test(x, y)
        want_a = scipy.stats.kendalltau(x, y, method="asymptotic")
        assert float(res.statistic) == pytest.approx(want_a.statistic, abs=1e-12)
        assert float(res.pvalue) == pytest.approx(want_a.pvalue, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=16, max_size=16))
def test_kendall_tau_property_ties(pairs):
    x, y = np.array(pairs, float).T
    if np.all(x == x[0]) or np.all(y == y[0]):
        with pytest.raises(ValueError, match="constant"):
            jc.kendall_tau(x, y)
        return
    assert float(jc.kendall_tau(x, y)) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=40, max_size=40))
def test_count_inversions_naive(keys):
    r = np.array(keys)
    naive = sum(int(r[i] > r[j]) for i in range(len(r)) for j in range(i + 1, len(r)))
    assert int(_inversions(jnp.asarray(r, jnp.int32))) == naive


_inversions = jax.jit(lambda r: _count_inversions(r, jnp.float64))


def test_kendall_tau_jit_vmap_dtype_and_ints():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(4, 100))
    Y = X + rng.normal(size=(4, 100))  # n = 100 as above: shares the compilation
    loop = [scipy.stats.kendalltau(a, b).statistic for a, b in zip(X, Y)]
    np.testing.assert_allclose(np.asarray(jax.vmap(jc.kendall_tau)(X, Y)), loop, atol=1e-12)
    assert float(jax.jit(jc.kendall_tau)(X[0], Y[0])) == pytest.approx(loop[0], abs=1e-12)
    t32 = jc.kendall_tau(X[0].astype(np.float32), Y[0].astype(np.float32))
    assert t32.dtype == jnp.float32 and float(t32) == pytest.approx(loop[0], abs=1e-6)
    xi, yi = rng.integers(0, 10, 100), rng.integers(0, 10, 100)
    assert float(jc.kendall_tau(xi, yi)) == pytest.approx(scipy.stats.kendalltau(xi, yi).statistic, abs=1e-12)
    assert float(jc.kendall_tau(np.arange(9.0), -np.arange(9.0))) == -1.0


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
P = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
Y = np.array([1, 0, 1])


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: jc.accuracy(P, np.array([1, 0])), ValueError, "lengths must match"),
        (lambda: jc.accuracy(P, np.array([1, 0, 2])), ValueError, r"labels must lie in \[0, 2\)"),
        (lambda: jc.accuracy(P, np.array([1, 0, -1])), ValueError, r"labels must lie in \[0, 2\)"),
        (lambda: jc.accuracy(np.array([0.3, -0.2, 1.0]), Y), TypeError, "1-D floating"),
        (lambda: jc.accuracy(np.array([[np.nan, 1.0], [0, 1], [1, 0]]), Y), ValueError, "pred must be finite"),
        (lambda: jc.accuracy(np.zeros((0, 2)), np.zeros(0, int)), ValueError, "pred must not be empty"),
        (lambda: jc.churn(np.array([0, 1]), np.array([0, 1, 1])), ValueError, "lengths must match"),
        (lambda: jc.pairwise_churn(np.zeros((2, 3))), ValueError, "preds must be"),
        (lambda: jc.ece(P, np.array([1, 0])), ValueError, "lengths must match"),
        (lambda: jc.ece(P + 0.1, Y), ValueError, "rows must sum to 1"),
        (lambda: jc.ece(P * 3 - 1, Y), ValueError, r"probs must lie in \[0, 1\]"),
        (lambda: jc.ece(P, np.array([1, 0, 3])), ValueError, r"labels must lie in \[0, 2\)"),
        (lambda: jc.ece(P, Y, n_bins=0), ValueError, "n_bins must be >= 1"),
        (lambda: jc.ece(P, Y, binning="kmeans"), ValueError, "binning must be one of"),
        (lambda: jc.ece(np.ones((3, 1)), Y * 0), ValueError, "at least 2 columns"),
        (lambda: jc.kendall_tau(np.arange(3.0), np.arange(4.0)), ValueError, "lengths must match"),
        (lambda: jc.kendall_tau(np.ones(5), np.arange(5.0)), ValueError, "x is constant"),
        (lambda: jc.kendall_tau(np.array([1.0]), np.array([2.0])), ValueError, "at least 2 points"),
        (lambda: jc.kendall_tau(np.array([1.0, np.inf]), np.array([2.0, 1.0])), ValueError, "x must be finite"),
        (lambda: jc.kendall_tau(np.array([]), np.array([])), ValueError, "x must not be empty"),
        (lambda: jc.kendall_tau_test(np.arange(2.0), np.arange(2.0)), ValueError, "at least 3 points"),
        (lambda: jc.metrics.ensemble_label(np.ones(4)), ValueError, "2 or 3 dimensions"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_labels_beyond_int32_are_refused_not_wrapped():
    """int64 labels beyond int32 (or negative beyond it) wrapped when JAX took them in int32 without x64: 2**32 + 1
    read as 1 and scored as correct; -2**32 read as 0. The range is now checked in the input's own dtype. The
    child runs without x64 (this suite enables it); the oracle is NumPy's range of the labels."""
    import subprocess
    import sys

    child = (
        "import numpy as np, jaxcompare as jc\n"
        "for y in (np.array([2**32 + 1, 2**32]), np.array([1, -2**32]), np.array([0.0, 3e9])):\n"
        "    try:\n"
        "        jc.metrics.accuracy(np.array([[.1, .9], [.9, .1]]), y); print('accepted')\n"
        "    except ValueError as e:\n"
        "        print(str(e))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all("must lie in [0, 2)" in line for line in lines), lines
    assert "from 4294967296 to 4294967297" in lines[0] and "from -4294967296 to 1" in lines[1]
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*31 - 1\]"):
        jc.fit_kglm(np.eye(3), np.array([0, 1, 2**40]))


def test_half_precision_counts_majority_votes_and_negative_labels_under_jit():
    """float16 accuracy over 70 000 points was NaN (the count overflows float16) and over 65 504 0.9995; integer
    (K, n) votes were read as logit gaps (label 1 wherever any model voted 1); under jit a label −1 read the last
    class's score. Oracles: scikit-learn's accuracy, a majority vote by np.bincount, NaN as documented."""
    import sklearn.metrics

    n = 70000
    pred = np.tile([[0.0, 1.0]], (n, 1)).astype(np.float16)
    y = np.ones(n, int)
    y[::7] = 0
    acc = jc.metrics.accuracy(pred, y)
    assert acc.dtype == jnp.float32
    np.testing.assert_allclose(float(acc), sklearn.metrics.accuracy_score(y, pred.argmax(1)), rtol=1e-6)
    np.testing.assert_allclose(float(jc.metrics.churn(pred, y)), np.mean(pred.argmax(1) != y), rtol=1e-6)
    votes = np.random.default_rng(0).integers(0, 4, size=(5, 200))
    oracle = [np.bincount(col, minlength=4).argmax() for col in votes.T]  # ties: smallest label
    assert jc.metrics.ensemble_label(votes).tolist() == oracle
    assert jc.metrics.ensemble_label(jnp.array([[0, 1, 1], [0, 0, 1], [1, 0, 1]])).tolist() == [0, 0, 1]
    logits = jnp.array([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]])
    got = jax.jit(lambda l, t: jc.logit_scores(l, t))(logits, jnp.array([-1, 1]))
    assert np.isnan(got[0]) and float(got[1]) == 2.0
    margin = jc.logit_scores(jnp.array([[6e4, -6e4]], jnp.float16), jnp.array([0]))
    assert float(margin[0]) == 120000.0  # overflowed float16 to inf
    for bad, match in ((None, "dtype object"), (["a", "b"], "strings: encode")):
        with pytest.raises(TypeError, match=match):
            jc.metrics.accuracy(bad, np.array([0, 1]))
