"""alpha-trimming: closed form and exact alpha-hat against linear-program oracles (scipy linprog, float64)."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcompare as jc
from jaxcompare.trimming._alpha_hat import _alpha_hat
from jaxcompare.trimming._core import make_grid, trimmed_distance


# ----------------------------------------------------------------------------------------------------------------
# Independent oracles (float64 NumPy/SciPy)
# ----------------------------------------------------------------------------------------------------------------
def _lp_setup(cand, ref):
    """Distinct candidate values v with masses p, pooled evaluation points z, F0(z) and the cumulative map."""
    cand, ref = np.asarray(cand, np.float64), np.asarray(ref, np.float64)
    v, cnt = np.unique(cand, return_counts=True)
    p = cnt / cand.size
    z = np.unique(np.concatenate([cand, ref]))
    F0 = np.searchsorted(np.sort(ref), z, side="right") / ref.size
    cum = (v[None, :] <= z[:, None]).astype(float)  # F~(z) = cum @ w
    return v, p, z, F0, cum


def lp_trimmed_ks(cand, ref, alpha):
    """min_w max_z |F0(z) - F~_w(z)| over w in [0, L p], sum w = 1 (sup of step functions is attained at z)."""
    v, p, z, F0, cum = _lp_setup(cand, ref)
    L = 1.0 / (1.0 - alpha)
    K, Z = v.size, z.size
    c = np.zeros(K + 1)
    c[-1] = 1.0  # minimise t
    A_ub = np.block([[cum, -np.ones((Z, 1))], [-cum, -np.ones((Z, 1))]])
    b_ub = np.concatenate([F0, -F0])
    A_eq = np.concatenate([np.ones(K), [0.0]])[None, :]
    bounds = [(0.0, min(1.0, L * pk)) for pk in p] + [(0.0, None)]
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return res.fun


def lp_alpha_hat(cand, ref, delta):
    """min L s.t. exists w: 0 <= w <= L p, sum w = 1, |F0(z) - F~_w(z)| <= delta; alpha = 1 - 1/L (1 if infeasible)."""
    v, p, z, F0, cum = _lp_setup(cand, ref)
    K, Z = v.size, z.size
    c = np.zeros(K + 1)
    c[-1] = 1.0  # minimise L
    A_ub = np.block(
        [
            [np.eye(K), -p[:, None]],  # w_k - L p_k <= 0
            [cum, np.zeros((Z, 1))],  # F~ <= F0 + delta
            [-cum, np.zeros((Z, 1))],  # F~ >= F0 - delta
        ]
    )
    b_ub = np.concatenate([np.zeros(K), F0 + delta, delta - F0])
    A_eq = np.concatenate([np.ones(K), [0.0]])[None, :]
    bounds = [(0.0, None)] * K + [(1.0, None)]
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs")
    if res.status == 2:  # infeasible for every L: no trimming can pass
        return 1.0
    assert res.status == 0, res.message
    return 1.0 - 1.0 / res.x[-1]


def make_sample(kind, seed, m=40, n=50):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.normal(size=m), rng.normal(0.2, 1.1, size=n)
    if kind == "contaminated":
        k = rng.integers(1, m // 3)
        cand = np.concatenate([rng.normal(size=m - k), rng.normal(4.0, 0.5, size=k)])
        return rng.permutation(cand), rng.normal(size=n)
    if kind == "ties":
        return rng.integers(0, 6, size=m).astype(float), rng.integers(0, 6, size=n).astype(float)
    if kind == "shared":  # reference and candidate share many exact values
        base = rng.normal(size=12)
        return rng.choice(base, m), np.concatenate([rng.choice(base, n - 5), rng.normal(size=5)])
    if kind == "small":
        return rng.integers(0, 4, size=3).astype(float), rng.integers(0, 4, size=4).astype(float)
    raise ValueError(kind)


KINDS = ["random", "contaminated", "ties", "shared"]
CASES = [(k, s) for k in KINDS for s in range(4)] + [("small", s) for s in range(3)]


@partial(jax.jit, static_argnames="grid")
def _distance(cand, ref, alpha, grid):
    return trimmed_distance(make_grid(cand, jnp.sort(ref), grid), 1 / (1 - alpha), cand.dtype)


# ----------------------------------------------------------------------------------------------------------------
# trimmed_ks
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["candidate", "reference", "pooled"])
@pytest.mark.parametrize("kind,seed", CASES)
def test_trimmed_ks_matches_lp(kind, seed, grid):
    cand, ref = make_sample(kind, seed)
    for alpha in (0.0, 0.05, 0.2, 0.5, 0.9):
        got = float(_distance(cand, ref, alpha, grid))
        want = lp_trimmed_ks(cand, ref, alpha)
        assert got == pytest.approx(want, abs=1e-8), (alpha, got, want)
        if grid == "reference":
            assert float(jc.trimmed_ks(cand, ref, alpha)) == pytest.approx(want, abs=1e-8)


@pytest.mark.parametrize("kind,seed", CASES)
def test_trimmed_ks_alpha0_is_ks_2samp(kind, seed):
    cand, ref = make_sample(kind, seed)
    want = scipy.stats.ks_2samp(cand, ref).statistic
    assert float(jc.trimmed_ks(cand, ref, 0.0)) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("kind,seed", CASES[::3])
def test_trimmed_ks_monotone_in_alpha_and_convex_in_L(kind, seed):
    cand, ref = make_sample(kind, seed)
    Ls = np.linspace(1.0, 6.0, 101)
    d = np.array([float(jc.trimmed_ks(cand, ref, 1 - 1 / L)) for L in Ls])
    assert np.all(np.diff(d) <= 1e-12)  # non-increasing in alpha (and L)
    assert np.all(d[:-2] - 2 * d[1:-1] + d[2:] >= -1e-12)  # convex in L (equal spacing)


def test_trimmed_ks_known_values():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    cand = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    # one outlier in five: removing it needs alpha = 1/5; at alpha = 0.1 the outlier keeps 1 - 0.8 L = 1/9 mass
    assert float(jc.trimmed_ks(cand, ref, 0.0)) == pytest.approx(0.2, abs=1e-15)
    assert float(jc.trimmed_ks(cand, ref, 0.1)) == pytest.approx(1 / 9, abs=1e-15)
    assert float(jc.trimmed_ks(cand, ref, 0.2)) == pytest.approx(0.0, abs=1e-15)
    # identical samples: zero at every level
    assert float(jc.trimmed_ks(ref, ref, 0.0)) == 0.0


def test_trimmed_ks_jit_vmap_dtype():
    rng = np.random.default_rng(3)
    cands = rng.normal(size=(7, 40))
    ref = rng.normal(size=50)
    alphas = np.linspace(0, 0.6, 7)
    loop = np.array([float(jc.trimmed_ks(c, ref, a)) for c, a in zip(cands, alphas)])
    vm = jax.vmap(jc.trimmed_ks, in_axes=(0, None, 0))(cands, ref, alphas)
    jt = jax.jit(jc.trimmed_ks)(cands[0], ref, alphas[0])
    np.testing.assert_allclose(np.asarray(vm), loop, rtol=0, atol=1e-14)
    assert float(jt) == pytest.approx(loop[0], abs=1e-14)
    # float32 in, float32 out, close to the float64 answer
    got32 = jc.trimmed_ks(cands[1].astype(np.float32), ref.astype(np.float32), np.float32(alphas[1]))
    assert got32.dtype == jnp.float32
    assert float(got32) == pytest.approx(loop[1], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# alpha_hat
# ----------------------------------------------------------------------------------------------------------------
def bisect_alpha(cand, ref, delta, tol=1e-12):
    f = lambda a: float(jc.trimmed_ks(cand, ref, a)) <= delta  # noqa: E731
    if f(0.0):
        return 0.0
    if not f(1 - 1e-13):
        return 1.0
    lo, hi = 0.0, 1 - 1e-13
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("grid", ["candidate", "reference", "pooled"])
@pytest.mark.parametrize("kind,seed", CASES)
def test_alpha_hat_matches_lp(kind, seed, grid):
    cand, ref = make_sample(kind, seed)
    for delta in (0.02, 0.1, 0.3):
        sol = _alpha_hat(jnp.asarray(cand), jnp.asarray(ref), jnp.asarray(delta), grid=grid)
        want = lp_alpha_hat(cand, ref, delta)
        assert bool(sol.converged)
        assert float(sol.alpha) == pytest.approx(want, abs=1e-7), (delta, float(sol.alpha), want)


@pytest.mark.parametrize("kind,seed", CASES[::2])
def test_alpha_hat_matches_bisection_and_is_tight(kind, seed):
    cand, ref = make_sample(kind, seed)
    for delta in (0.05, 0.15):
        a = float(jc.alpha_hat(cand, ref, threshold=delta))
        assert a == pytest.approx(bisect_alpha(cand, ref, delta), abs=1e-9)
        if a < 1:
            assert lp_trimmed_ks(cand, ref, a) <= delta + 1e-8  # feasible at alpha-hat (LP oracle)
        if 1e-6 < a < 1:
            assert lp_trimmed_ks(cand, ref, a - 1e-6) > delta  # and not before


def test_alpha_hat_closed_form_case():
    ref = np.linspace(0.0, 1.0, 101)
    cand = np.concatenate([ref, np.full(25, 5.0)])
    # outliers hold 25/126 of the mass; F0(5-) - L F(5-) <= delta gives L = (1 - delta) * 126 / 101
    want = 1 - 101 / (0.95 * 126)
    assert float(jc.alpha_hat(cand, ref, threshold=0.05)) == pytest.approx(want, abs=1e-12)


def test_alpha_hat_infeasible_is_one():
    # the reference has 30% of its mass where the candidate has none, so no trimming of the candidate helps
    ref = np.concatenate([np.zeros(30), np.linspace(1, 2, 70)])
    cand = np.linspace(1, 2, 50)
    assert float(jc.alpha_hat(cand, ref, threshold=0.1)) == 1.0
    assert lp_alpha_hat(cand, ref, 0.1) == 1.0
    # interval case: 30% of reference mass strictly between two candidate values
    ref2 = np.concatenate([np.full(30, 0.5), np.linspace(-1, 0, 35), np.linspace(1, 2, 35)])
    cand2 = np.concatenate([np.linspace(-1, 0, 20), np.linspace(1, 2, 20)])
    assert float(jc.alpha_hat(cand2, ref2, threshold=0.1)) == 1.0
    assert lp_alpha_hat(cand2, ref2, 0.1) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    cand=st.lists(st.integers(-3, 3), min_size=9, max_size=9),
    ref=st.lists(st.integers(-3, 3), min_size=11, max_size=11),
    delta=st.sampled_from([0.05, 0.1, 0.25, 0.5]),
)
def test_alpha_hat_property_lp(cand, ref, delta):
    """Tie-heavy small samples, including disjoint supports (fixed sizes: one compilation)."""
    cand, ref = np.array(cand, float), np.array(ref, float)
    assert float(jc.alpha_hat(cand, ref, threshold=delta)) == pytest.approx(lp_alpha_hat(cand, ref, delta), abs=1e-7)


def test_alpha_hat_monotone_in_threshold_and_zero_when_ks_passes():
    cand, ref = make_sample("contaminated", 11)
    deltas = np.linspace(0.01, 0.5, 25)
    a = np.array([float(jc.alpha_hat(cand, ref, threshold=d)) for d in deltas])
    assert np.all(np.diff(a) <= 1e-12)
    ks = scipy.stats.ks_2samp(cand, ref).statistic
    assert np.all(a[deltas >= ks] == 0.0) and np.all(a[deltas < ks] > 0.0)


def test_alpha_hat_vmap_jit_dtype_and_default_threshold():
    rng = np.random.default_rng(5)
    n, m = 50, 40
    ref = rng.normal(size=n)
    cands = np.stack([np.concatenate([rng.normal(size=m - k), rng.normal(3, 1, size=k)]) for k in range(0, 20, 4)])
    delta = jc.ks_threshold(m, n, level=0.01)
    loop = np.array([float(jc.alpha_hat(c, ref, threshold=delta)) for c in cands])
    vm = jax.vmap(lambda c: jc.alpha_hat(c, ref, threshold=delta))(cands)
    jt = jax.jit(lambda c, r: jc.alpha_hat(c, r, threshold=delta))(cands[3], ref)
    np.testing.assert_allclose(np.asarray(vm), loop, rtol=0, atol=1e-14)
    assert float(jt) == pytest.approx(loop[3], abs=1e-14)
    assert float(jc.alpha_hat(cands[3], ref)) == pytest.approx(loop[3], abs=1e-14)  # default = DKW at level 0.01
    for k in range(len(cands)):
        assert loop[k] == pytest.approx(lp_alpha_hat(cands[k], ref, delta), abs=1e-7)
    a32 = jax.vmap(lambda c: jc.alpha_hat(c, ref.astype(np.float32), threshold=delta))(cands.astype(np.float32))
    assert a32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a32), loop, atol=2e-5)


def test_alpha_hat_steps_are_few():
    cand, ref = make_sample("contaminated", 2, m=2000, n=2000)
    sol = _alpha_hat(jnp.asarray(cand), jnp.asarray(ref), jnp.asarray(0.02))
    assert bool(sol.converged) and int(sol.steps) <= 50


def test_trimming_is_contamination_consistent():
    """Statistical sanity check. Candidate = (1 - eps) N(0,1) + eps N(8, 0.1) with eps = 0.2, reference N(0,1),
    m = n = 4000, delta = DKW(0.01). Since the outliers sit beyond the reference, alpha-hat >= eps_emp - delta and
    alpha-hat <= eps_emp + 2 delta whenever the clean parts pass KS at delta (probability >= 0.99 by DKW, and the
    binomial eps_emp lies within 0.2 +- 0.025 with probability > 1 - 1e-4): false-failure probability < 0.011;
    fixed seed, so the test is deterministic."""
    rng = np.random.default_rng(0)
    m = n = 4000
    k = rng.binomial(m, 0.2)
    cand = np.concatenate([rng.normal(size=m - k), rng.normal(8, 0.1, size=k)])
    ref = rng.normal(size=n)
    delta = jc.ks_threshold(m, n, level=0.01)
    a = float(jc.alpha_hat(cand, ref, threshold=delta))
    eps = k / m
    assert eps - delta <= a <= eps + 2 * delta


# ----------------------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------------------
def test_ks_threshold_values():
    assert jc.ks_threshold(4000, 4000, level=0.01) == pytest.approx(0.036645, abs=5e-7)  # published number
    n = 250
    assert jc.ks_threshold(n, n, 0.05) == pytest.approx(math.sqrt(math.log(40) / n) + 1 / n, rel=1e-14)
    # asymptotic: Kolmogorov quantile (scipy.stats.kstwobign) times sqrt((n+m)/(nm))
    c = scipy.stats.kstwobign.isf(0.05)
    assert c == pytest.approx(1.3581, abs=1e-4)
    assert jc.ks_threshold(100, 300, 0.05, "asymptotic") == pytest.approx(c * math.sqrt(400 / 30000), rel=1e-10)
    # unequal sizes with DKW use n_eff = 2nm/(n+m)
    assert jc.ks_threshold(100, 300, 0.05) == pytest.approx(jc.ks_threshold(150, 150, 0.05), rel=1e-14)


def test_ks_threshold_dkw_is_conservative():
    """P(D_{n,n} >= delta_n) <= level under the null, with the exact two-sample KS distribution of scipy: samples
    arange(n) and arange(n) + k - 0.5 have D = k/n, and ks_2samp(method="exact") gives P(D >= k/n)."""
    for n in (50, 200, 500):
        for level in (0.01, 0.05):
            k = math.ceil(jc.ks_threshold(n, n, level) * n - 1e-9)
            x = np.arange(n, dtype=float)
            res = scipy.stats.ks_2samp(x, x + k - 0.5, method="exact")
            assert res.statistic == pytest.approx(k / n)
            assert res.pvalue <= level


def test_half_precision_scores_are_counted_in_float32():
    """float16 samples: the empirical CDFs' counts were float16 (2048 is its last exact integer), so a KS of 0.12
    over 70 000 points read 0 and α̂ of every model 1.0 (select_members picked the shifted model 0). Oracle: the
    same computation on the rounded values in float32, which the LP and SciPy tests above check."""
    import jaxcompare as jc

    g = np.random.default_rng(0)
    c16, r16 = g.normal(size=70000).astype(np.float16), (g.normal(size=70000) + 0.3).astype(np.float16)
    got = jc.trimming.trimmed_ks(c16, r16, 0.0)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        float(got), float(jc.trimming.trimmed_ks(c16.astype(np.float32), r16.astype(np.float32), 0.0)), rtol=1e-6
    )
    s = g.normal(size=(12, 4000))
    s[0] += 1.0
    for dt in (np.float16, jnp.bfloat16):
        sel = jc.trimming.select_members(jax.random.key(0), np.asarray(jnp.asarray(s, dt)), k=5)
        ref = jc.trimming.select_members(jax.random.key(0), np.asarray(jnp.asarray(s, dt).astype(jnp.float32)), k=5)
        assert (
            0 not in np.asarray(sel.members).tolist()
            and np.asarray(sel.members).tolist() == np.asarray(ref.members).tolist()
        )


def test_boolean_arrays_are_not_numbers():
    """``jnp.array(True)`` passed as a level or threshold was read as 1 (``recipe_alpha(..., threshold=
    jnp.array(True))`` returned 0.0); Python and NumPy booleans were already refused."""
    import jaxcompare as jc

    c, r = np.arange(5.0), np.arange(6.0)
    for bad in (jnp.array(True), np.array(False)):
        with pytest.raises(TypeError, match="must be a real number"):
            jc.trimming.trimmed_ks(c, r, bad)
        with pytest.raises(TypeError, match="must be a real number"):
            jc.trimming.recipe_alpha(c, r[None], threshold=bad)
