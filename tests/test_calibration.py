"""Smooth ECE, bootstrap intervals for calibration errors, the reliability diagram, and Kendall's tau on the host.

Oracles: (1) relplot's discretized estimator re-implemented here in float64 NumPy from its documented algorithm
(``np.add.at`` binning, reflected ``np.convolve``, linear interpolation, ten bisection steps); (2) the continuous
definition of Błasiok–Nakkiran evaluated by direct O(n·T) kernel sums; (3) relplot 1.0.3 values pinned from
``python benchmarks/bench_calibration.py`` (recorded in its output and in docs/benchmarks.md); (4) SciPy for Kendall.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxcompare as jc
from jaxcompare.metrics._kendall import _inversions_host
from jaxcompare.metrics._smooth_ece import CELLS_ABOVE


# ------------------------------------------------------------------------------------------------------------------
# oracles
# ------------------------------------------------------------------------------------------------------------------
def _np_grid_smooth(f, q, sigma):
    """relplot's smoothing at bandwidth sigma, float64: linear binning, reflected truncated Gaussian, interpolation."""
    e = max(2000, round(20 / sigma)) // 2 + 1
    k = np.clip((f * (e - 1)).astype(int), 0, e - 2)
    frac = f * (e - 1) - k
    vals = np.zeros(e)
    np.add.at(vals, k, (1 - frac) * q)
    np.add.at(vals, k + 1, frac * q)
    tk = np.linspace(0, 1, e)
    ker = np.exp(-((tk - 0.5) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    ext = np.concatenate([vals[::-1][:-1], vals, vals[::-1][1:]])
    sm = np.convolve(ext, ker, "valid")[e // 2 : e // 2 + e]
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    i = np.clip((t * (e - 1)).astype(int), 0, e - 2)
    w = t * (e - 1) - i
    return sm[i] * (1 - w) + sm[i + 1] * w


def relplot_oracle(f, y, eps=1e-3):
    """relplot.smECE(f, y, eps) re-implemented: returns (value, sigma)."""
    f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)

    def sm(sigma):
        num = _np_grid_smooth(f, f - y, sigma)
        den = _np_grid_smooth(f, np.ones_like(f), sigma) + 1e-4
        return np.sum(np.abs(num)) / np.sum(den)

    def below(s):
        return s < eps or s < sm(s)

    start, end = 1.0, 0.0
    if not below(start):
        for _ in range(10):
            mid = (start + end) / 2
            if below(mid):
                end = mid
            else:
                start = mid
    return sm(start), start


def continuous_smece_sigma(f, y, sigma):
    """The paper's definition by direct kernel sums (Gaussian reflected at 0 and 1, no grid, no truncation),
    evaluated at relplot's points ``t_j = j/(T-1)``."""
    f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
    t = np.linspace(0, 1, max(round(10 / sigma), 200))[:, None]
    k = sum(np.exp(-((t - g) ** 2) / (2 * sigma**2)) for g in (f, -f, 2 - f)) / (np.sqrt(2 * np.pi) * sigma)
    r_hat = k @ (f - y)
    dens = k.sum(1)
    return np.sum(np.abs(r_hat)) / np.sum(dens)


def continuous_smece(f, y, eps=1e-3):
    start, end = 1.0, 0.0
    for _ in range(10):
        mid = (start + end) / 2
        if mid < eps or mid < continuous_smece_sigma(f, y, mid):
            end = mid
        else:
            start = mid
    return continuous_smece_sigma(f, y, start), start


def _binary(n, seed, power=1.0):
    rng = np.random.default_rng(seed)
    f = rng.random(n)
    return f, (rng.random(n) < f**power).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------------
# smooth ECE against the oracles
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,power,seed", [(50, 1.0, 0), (10_000, 2.0, 1), (10_000, 1.0, 2), (10_000, 0.3, 3)])
def test_smooth_ece_matches_relplot_algorithm(n, power, seed):
    f, y = _binary(n, seed, power)
    want, want_sigma = relplot_oracle(f, y)
    got, sigma = jc.smooth_ece(f, y, return_sigma=True)
    assert float(sigma) == want_sigma
    assert float(got) == pytest.approx(want, abs=1e-12)


def test_smooth_ece_matches_continuous_definition():
    # relplot's grid differs from the definition by O(h) at the ends (mass binned to the end node is not mirrored,
    # a point at 0 has images f and -f) and by O((h/σ)²) inside, h = 1/1000; measured 2e-5 absolute here
    f, y = _binary(2_000, 4, 2.0)
    got, sigma = jc.smooth_ece(f, y, return_sigma=True)
    want, want_sigma = continuous_smece(f, y)
    assert float(sigma) == want_sigma
    assert float(got) == pytest.approx(want, abs=1e-4)
    for s in (0.01, 0.03, 0.1, 0.3):
        assert float(jc.smooth_ece_sigma(f, y, s)) == pytest.approx(continuous_smece_sigma(f, y, s), rel=5e-4)


# relplot 1.0.3 on the inputs of benchmarks/bench_calibration.py (cases(n_time=0)), pinned from
# `python benchmarks/bench_calibration.py` (value, sigma); the run is recorded in docs/benchmarks.md
RELPLOT_1_0_3 = {
    "demo": (0.10910051453363251, 0.109375),
    "calibrated": (0.010715168553104552, 0.01171875),
    "overconfident": (0.1766975709850389, 0.1767578125),
    "small": (0.06896893815715495, 0.0693359375),
    "multiclass": (0.13134080721785119, 0.1318359375),
    "random1e5": (0.17744326302071556, 0.177734375),
}


def _bench_cases():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_calibration.py"
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cases(0)


@pytest.mark.slow
def test_smooth_ece_pinned_relplot_values():
    data = _bench_cases()
    for name, (want, want_sigma) in RELPLOT_1_0_3.items():
        p, y = data[name]
        got, sigma = jc.smooth_ece(p, y, return_sigma=True)
        assert abs(float(got) - want) <= 1e-10, name  # goal 1e-4; measured 6e-17
        assert float(sigma) == want_sigma, name


@pytest.mark.slow
def test_smooth_ece_cell_path_large_n():
    # above CELLS_ABOVE points the points are pre-binned into cells; exact for σ >= 0.01, O(((E-1)/G)²) below
    for power, seed, tol in ((1.3, 5, 1e-12), (1.0, 6, 1e-7)):  # σ* ≈ 0.05 (E = 1001), σ* ≈ 0.002 (E ≈ 5000)
        f, y = _binary(CELLS_ABOVE + 5_000, seed, power)
        if power == 1.0:
            f = np.clip(f + 0.004 * (f - 0.5), 0, 1)  # mildly over-confident: σ* well below 0.01
        want, want_sigma = relplot_oracle(f, y)
        got, sigma = jc.smooth_ece(f, y, return_sigma=True)  # cells summed on the host
        assert float(sigma) == want_sigma
        assert abs(float(got) - want) <= tol
        traced = jax.jit(jc.smooth_ece)(f, y)  # cells summed by a scatter-add under jit
        assert abs(float(traced) - want) <= tol


def test_smooth_ece_multiclass_is_top_label():
    rng = np.random.default_rng(7)
    logits = 2 * rng.normal(size=(3_000, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 4, 3_000)
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    want, _ = relplot_oracle(conf, hit)
    assert float(jc.smooth_ece(p, y)) == pytest.approx(want, abs=1e-12)


def test_smooth_ece_properties():
    f, y = _binary(10_000, 2, 1.0)  # calibrated: only the noise floor (≈ 0.01 at this n, relplot alike)
    assert float(jc.smooth_ece(f, y)) < 0.02
    perm = np.random.default_rng(0).permutation(10_000)
    assert float(jc.smooth_ece(f[perm], y[perm])) == pytest.approx(float(jc.smooth_ece(f, y)), abs=1e-13)
    # over-confident (y ~ Bernoulli(f²)): the smoothed curve lies below the diagonal; under-confident above
    t_mid = slice(40, 181)  # t in [0.2, 0.9] on 201 points
    over = jc.smooth_reliability(*_binary(10_000, 1, 2.0))
    under = jc.smooth_reliability(*_binary(10_000, 3, 0.3))
    assert np.all(np.asarray(over.mean - over.t)[t_mid] < 0)
    assert np.all(np.asarray(under.mean - under.t)[t_mid] > 0)
    # population smECE of y ~ Bern(f²) is below E|f - f²| = 1/6 (smoothing only averages residuals)
    assert 0.12 < float(over.smece) < 1 / 6 + 0.01
    # the density integrates to about one
    assert float(jnp.mean(over.density)) == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_smooth_ece_jit_vmap_dtype():
    fs = np.stack([_binary(200, s, 1.5)[0] for s in range(3)])
    ys = np.stack([_binary(200, s, 1.5)[1] for s in range(3)])
    loop = [relplot_oracle(a, b)[0] for a, b in zip(fs, ys)]
    np.testing.assert_allclose(np.asarray(jax.vmap(jc.smooth_ece)(fs, ys)), loop, atol=1e-12)
    assert float(jax.jit(jc.smooth_ece)(fs[0], ys[0])) == pytest.approx(loop[0], abs=1e-12)
    v32 = jc.smooth_ece(fs[0].astype(np.float32), ys[0])
    assert v32.dtype == jnp.float32 and float(v32) == pytest.approx(loop[0], abs=1e-5)
    assert jc.smooth_ece(fs[0], ys[0]).dtype == jnp.float64
    from jaxcompare._checked import checked  # value checks under jit (opt-in checked mode)

    bad = fs[0].copy()
    bad[3] = np.nan
    with pytest.raises(Exception, match="probs must be finite"):
        checked(jax.jit(jc.smooth_ece))(bad, ys[0])


# ------------------------------------------------------------------------------------------------------------------
# bootstrap intervals
# ------------------------------------------------------------------------------------------------------------------
def _two_col(f):
    return np.stack([1 - f, f], 1)


def test_ece_interval_reproducible_and_estimate():
    f, y = _binary(1_000, 8, 2.0)
    p = _two_col(f)
    a = jc.ece_interval(jax.random.key(0), p, y, n_boot=64, level=0.9)
    c = jc.ece_interval(jax.random.key(1), p, y, n_boot=64, level=0.9)
    assert float(a.estimate) == float(jc.ece(p, y))
    assert (float(a.lower), float(a.upper)) != (float(c.lower), float(c.upper))
    assert a.lower <= a.upper and (a.n_boot, a.level, a.method) == (64, 0.9, "basic")
    leaves = jax.tree_util.tree_leaves(a)
    assert len(leaves) == 3  # n_boot, level and method are static metadata
    # basic = 2 estimate - (percentile interval reversed), clipped at 0; another batch_size gives the same replicates
    pc = jc.ece_interval(jax.random.key(0), p, y, n_boot=64, level=0.9, method="percentile", batch_size=7)
    assert float(a.lower) == pytest.approx(max(2 * float(a.estimate) - float(pc.upper), 0), abs=1e-14)
    assert float(a.upper) == pytest.approx(max(2 * float(a.estimate) - float(pc.lower), 0), abs=1e-14)


def test_ece_interval_coverage():
    # f ~ U(0, 1), y ~ Bernoulli(f²): the population classwise 15-bin ECE is ∫(f - f²) = 1/6 exactly for both
    # classes (the gap has one sign on every bin; top-label would be calibrated, the gaps of f and 1 - f cancel)
    # and the estimator is nearly unbiased at n = 2000. With nominal 90% coverage the number of hits among 40
    # independent datasets is Binomial(40, 0.9); P(hits <= 29) = 1.6e-3 (false-failure probability of this test).
    hits, widths, ests = 0, [], []
    for s in range(40):
        f, y = _binary(2_000, 100 + s, 2.0)
        r = jc.ece_interval(jax.random.key(s), _two_col(f), y, n_boot=200, level=0.9, classwise=True)
        hits += int(r.lower <= 1 / 6 <= r.upper)
        widths.append(float(r.upper - r.lower))
        ests.append(float(r.estimate))
    assert hits >= 30
    # and not by being too wide: mean width / (2 · 1.645 · sd of the estimates) is 1 ± 0.25 (sd estimated from 40)
    assert 0.6 < np.mean(widths) / (2 * 1.645 * np.std(ests, ddof=1)) < 1.6


def test_smooth_ece_interval():
    f, y = _binary(1_000, 9, 1.0)
    fo, yo = _binary(1_000, 10, 2.5)
    cal = jc.smooth_ece_interval(jax.random.key(0), f, y, n_boot=32)
    mis = jc.smooth_ece_interval(jax.random.key(0), fo, yo, n_boot=32)
    assert float(cal.estimate) == float(jc.smooth_ece(f, y))
    assert 0 <= cal.lower <= cal.upper
    assert mis.lower <= mis.estimate <= mis.upper  # far from calibrated: the bias is negligible
    assert float(cal.upper) < float(mis.lower)


@pytest.mark.slow
def test_smooth_ece_interval_batch_invariant():
    f, y = _binary(1_000, 9, 1.0)
    a = jc.smooth_ece_interval(jax.random.key(0), f, y, n_boot=12, method="percentile")
    b = jc.smooth_ece_interval(jax.random.key(0), f, y, n_boot=12, method="percentile", batch_size=1)
    assert float(a.lower) == pytest.approx(float(b.lower), abs=1e-12)
    assert float(a.upper) == pytest.approx(float(b.upper), abs=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# reliability diagram
# ------------------------------------------------------------------------------------------------------------------
def test_plot_reliability_without_band():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    f, y = _binary(1_000, 11, 2.0)
    fig = jc.plot_reliability(f, y)
    ax0, ax1 = fig.axes
    assert len(ax0.collections) == 0 and ax0.get_xlim() == (0.0, 1.0) and ax0.get_ylim() == (0.0, 1.0)
    assert ax0.get_title().startswith("smooth ECE = ") and ax1.get_ylabel() == "count"
    plt.close(fig)


@pytest.mark.slow
def test_plot_reliability():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    f, y = _binary(1_000, 11, 2.0)
    fig = jc.plot_reliability(f, y, key=jax.random.key(0), n_boot=20)
    ax0, ax1 = fig.axes
    assert ax0.get_ylabel() == "observed frequency" and ax1.get_xlabel() == "predicted probability"
    assert len(ax0.collections) == 1  # the band
    assert [t.get_text() for t in ax0.get_legend().get_texts()][0] == "perfect calibration"
    assert "smooth ECE" in ax0.get_title() and "95% CI [" in ax0.get_title()
    plt.close(fig)
    fig = jc.plot_reliability(_two_col(f), y)
    assert len(fig.axes[0].collections) == 0 and fig.axes[0].get_ylabel() == "accuracy"
    plt.close(fig)
    band = jc.smooth_reliability(f, y, key=jax.random.key(1), n_boot=20, n_points=11)
    assert np.all(np.asarray(band.lower) <= np.asarray(band.upper))


# ------------------------------------------------------------------------------------------------------------------
# Kendall's tau on the host (contingency table and bit-level inversion count)
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["table", "wavelet", "continuous-x"])
def test_kendall_tau_ties_1e5_matches_scipy(kind):
    rng = np.random.default_rng(12)
    n = 100_000
    if kind == "table":  # 50 x 50 distinct values: contingency table
        x, y = rng.integers(0, 50, n).astype(float), rng.integers(0, 50, n).astype(float)
        y = np.where(rng.random(n) < 0.3, x, y)
    elif kind == "wavelet":  # many distinct y: inversion count
        x = rng.integers(0, 1000, n).astype(float)
        y = rng.integers(0, 1000, n) + 0.3 * x
    else:
        x = rng.normal(size=n).round(2)
        y = x + rng.normal(size=n)
    want = scipy.stats.kendalltau(x, y)
    res = jc.kendall_tau_test(x, y)
    assert float(jc.kendall_tau(x, y)) == pytest.approx(want.statistic, abs=1e-12)
    assert float(res.statistic) == pytest.approx(want.statistic, abs=1e-12)
    assert float(res.pvalue) == pytest.approx(want.pvalue, abs=1e-10, rel=1e-8)


def test_kendall_host_equals_traced():
    rng = np.random.default_rng(13)
    x = rng.integers(0, 20, 3_000).astype(float)
    y = rng.normal(size=3_000) + x
    assert float(jax.jit(jc.kendall_tau)(x, y)) == pytest.approx(float(jc.kendall_tau(x, y)), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_inversions_host_naive(seed):
    rng = np.random.default_rng(seed)
    n, m = 300, [2, 7, 300, 1000][seed]
    a = rng.integers(0, m, n)
    naive = int(np.triu(a[:, None] > a[None, :], 1).sum())
    assert _inversions_host(a.astype(np.int32), max(1, (m - 1).bit_length())) == naive


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------
F = np.array([0.2, 0.7, 0.9])
Y = np.array([0, 1, 1])
K = jax.random.key(0)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: jc.smooth_ece(F * 2, Y), ValueError, r"probs must lie in \[0, 1\]"),
        (lambda: jc.smooth_ece(np.array([0.2, np.nan, 0.3]), Y), ValueError, "probs must be finite"),
        (lambda: jc.smooth_ece(F, np.array([0, 2, 1])), ValueError, r"labels must lie in \[0, 2\)"),
        (lambda: jc.smooth_ece(F, np.array([0, 1])), ValueError, "lengths must match"),
        (lambda: jc.smooth_ece(np.ones((3, 2, 2)) / 2, Y), ValueError, "probs must have 1 or 2 dimensions"),
        (lambda: jc.smooth_ece(np.array([[0.5, 0.6]] * 3), Y), ValueError, "rows must sum to 1"),
        (lambda: jc.smooth_ece(np.array([]), np.array([], int)), ValueError, "probs must not be empty"),
        (lambda: jc.smooth_ece(F, np.array([0.0, 0.5, 1.0])), ValueError, "integer class labels"),
        (lambda: jc.smooth_ece(F, Y, eps=1.0), ValueError, r"eps must lie in \[0, 1\)"),
        (lambda: jc.smooth_ece_sigma(F, Y, 0.0), ValueError, "sigma must lie in"),
        (lambda: jc.ece_interval(None, _two_col(F), Y), TypeError, "key is required"),
        (lambda: jc.ece_interval(K, _two_col(F), Y, n_boot=1), ValueError, "n_boot must be >= 2"),
        (lambda: jc.ece_interval(K, _two_col(F), Y, level=1.0), ValueError, "level must lie in"),
        (lambda: jc.ece_interval(K, _two_col(F), Y, method="bca"), ValueError, "method must be one of"),
        (lambda: jc.smooth_ece_interval(K, F, Y, batch_size=0), ValueError, "batch_size must be >= 1"),
        (lambda: jc.smooth_ece_interval(K, F * 3, Y), ValueError, r"probs must lie in \[0, 1\]"),
        (lambda: jc.smooth_reliability(F, Y, n_points=1), ValueError, "n_points must be >= 2"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_constants_documented():
    from jaxcompare.metrics import _smooth_ece as S

    assert S.E_MAX == 10241 and S.T_MAX == 10240 and S.FFT_LEN >= 3 * S.E_MAX - 2
    assert S.N_CELLS % 1000 == 0 and S.N_CELLS * (S.E_MAX - 1) < 2**31
    assert math.isclose(S.SIGMA_MIN, 2**-10)


def test_low_precision_probabilities_and_yes_no_options():
    """float16/bfloat16 probabilities are taken in float32: bin counts and sums in them stopped at 2048 (float16)
    and 256 (bfloat16), so an ECE of 0.44 came out 0.17 and 0; AUROC ranks in float16 gave NaN. Oracle: the ECE of
    constant confidence 0.95 is |0.95 − accuracy|; AUROC from scikit-learn's definition by pairs (NumPy)."""
    n = 3000
    g = np.random.default_rng(0)
    correct = g.random(n) < 0.5087
    probs = np.zeros((n, 2))
    probs[:, 0], probs[:, 1] = 0.95, 0.05
    labels = np.where(correct, 0, 1)
    want = abs(0.95 - correct.mean())
    scores = g.normal(size=400) + 0.4 * (pos := g.random(400) < 0.5)
    diff = scores[pos][:, None] - scores[~pos][None, :]
    auroc_want = float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    for dt in (jnp.float16, jnp.bfloat16):
        p = jnp.asarray(probs, dt)
        assert abs(float(jc.ece(p, labels, n_bins=15)) - want) < 2e-3, dt
        s = jnp.asarray(scores, dt)
        assert abs(float(jc.metrics.auroc(s, pos)) - auroc_want) < 0.02, dt  # scores rounded to 8 / 11 bits
    p32 = jnp.asarray(probs, jnp.float32)
    with pytest.raises(TypeError, match="classwise must be True or False"):
        jc.ece(p32, labels, classwise="no")
    with pytest.raises(TypeError, match="return_sigma must be True or False"):
        jc.smooth_ece(p32, labels, return_sigma="no")
    with pytest.raises(ValueError, match="eps must lie in"):
        jc.metrics.smooth_reliability(p32, labels, eps=5.0)
