"""Tests of jaxcompare.spectra against independent float64 oracles (SciPy quadrature, NumPy random matrices,
naive loops). Statistical tests use fixed seeds; their false-failure probability for a random seed is stated."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import jaxcompare.spectra as S


# ---------------------------------------------------------------- Gaussian constants
def _gauss_expect(f):
    return scipy.integrate.quad(
        lambda x: f(x) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi), -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200
    )[0]


@pytest.mark.parametrize(
    "name, phi, dphi",
    [
        ("tanh", np.tanh, lambda x: 1 - np.tanh(x) ** 2),
        ("erf", scipy.special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
        ("sin", np.sin, np.cos),
    ],
)
def test_gaussian_constants_match_quadrature(name, phi, dphi):
    c = S.gaussian_constants(name)
    assert c.b == pytest.approx(_gauss_expect(dphi), abs=1e-10)
    assert c.a == pytest.approx(_gauss_expect(lambda x: dphi(x) ** 2), abs=1e-10)
    assert c.m2 == pytest.approx(_gauss_expect(lambda x: phi(x) ** 2), abs=1e-10)
    assert c.mean == pytest.approx(0.0, abs=1e-12)


def test_gaussian_constants_tanh_spec_numbers():
    c = S.gaussian_constants("tanh")
    assert (round(c.b, 4), round(c.a, 4), round(c.m2, 4)) == (0.6057, 0.4644, 0.3943)


def test_gaussian_constants_relu_and_callable():
    c = S.gaussian_constants("relu")
    assert c.mean == pytest.approx(1 / np.sqrt(2 * np.pi))
    assert (c.b, c.a, c.m2) == (0.5, 0.5, 0.5)
    cub = S.gaussian_constants((lambda x: x**3, lambda x: 3 * x**2))
    assert (cub.b, cub.a, cub.m2) == pytest.approx((3.0, 27.0, 15.0))  # E 3ξ², E 9ξ⁴, E ξ⁶


def test_gaussian_constants_bad_input():
    with pytest.raises(ValueError, match="activation must be one of"):
        S.gaussian_constants("swish")
    with pytest.raises(TypeError, match="pair"):
        S.gaussian_constants(3)


# ---------------------------------------------------------------- Marchenko–Pastur
@pytest.mark.parametrize("c", [0.3, 2 / 3, 1.0, 1.7])
def test_mp_density_mass_and_stieltjes_by_quadrature(c):
    lo, hi = S.mp_support(c)
    assert (lo, hi) == pytest.approx(((1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2))
    mass = scipy.integrate.quad(lambda x: float(S.mp_density(x, c)), lo, hi, limit=200)[0]
    atom = S.mp_atom(c)
    assert mass + atom == pytest.approx(1.0, abs=1e-7)
    assert atom == pytest.approx(max(0.0, 1 - 1 / c))
    for z in (0.5 + 0.3j, 1.5 + 0.1j, -1.0 + 0.01j, 4.0 + 1.0j):
        re = scipy.integrate.quad(lambda x, z=z: float(S.mp_density(x, c)) * (1 / (x - z)).real, lo, hi, limit=400)[0]
        im = scipy.integrate.quad(lambda x, z=z: float(S.mp_density(x, c)) * (1 / (x - z)).imag, lo, hi, limit=400)[0]
        expected = re + 1j * im + atom / (0.0 - z)
        assert complex(S.mp_stieltjes(z, c)) == pytest.approx(expected, abs=1e-6)


def test_mp_stieltjes_matches_wishart_sample():
    # Σ = WᵀW/h with W (h, d) iid N(0,1): empirical transform within C/d of the law (spec: ~3e-2 at d = 250).
    rng = np.random.default_rng(0)
    h, d = 1200, 800
    W = rng.standard_normal((h, d))
    lam = np.linalg.eigvalsh(W.T @ W / h)
    z = np.array([0.5 + 0.1j, 1.0 + 0.1j, 2.0 + 0.1j])
    assert S.stieltjes_distance(lam, S.mp_stieltjes(z, d / h), z) < 30 / d


def test_mp_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        S.mp_support(0.0)
    with pytest.raises(ValueError, match="ratio"):
        S.mp_density(1.0, -1.0)


# ---------------------------------------------------------------- empirical Stieltjes
def test_empirical_stieltjes_oracle_jit_vmap_dtype():
    rng = np.random.default_rng(1)
    lam = rng.uniform(0, 3, size=(4, 50))
    z = np.array([1 + 0.1j, 2 + 0.5j])
    expected = np.mean(1 / (lam[:, None, :] - z[None, :, None]), axis=-1)
    got = S.empirical_stieltjes(lam, z)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(S.empirical_stieltjes)(lam, z)), expected, rtol=1e-12)
    loop = np.stack([np.asarray(S.empirical_stieltjes(l, z)) for l in lam])
    np.testing.assert_allclose(np.asarray(jax.vmap(S.empirical_stieltjes, (0, None))(lam, z)), loop, rtol=1e-12)
    f32 = S.empirical_stieltjes(jnp.asarray(lam, jnp.float32), jnp.asarray(z, jnp.complex64))
    assert f32.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(f32), expected, rtol=1e-5)
    assert S.empirical_stieltjes(lam[0], 1 + 0.1j).shape == ()


# ---------------------------------------------------------------- Fan–Wang
def _two_layer_sample(n, d, h, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((h, d))
    v = rng.choice([-1.0, 1.0], size=h)
    U = X @ W.T / np.sqrt(d)
    F, Fp = np.tanh(U), (1 - np.tanh(U) ** 2) * v
    ck = F @ F.T / h
    kw = (X @ X.T / d) * (Fp @ Fp.T / h)
    return ck, kw


def test_fan_wang_matches_random_two_layer_network():
    # Oracle: an independent NumPy float64 network. Spec tolerance ~ C/n (CK 1.1e-2, NTK 7.6e-2 at n = 1000).
    n, d, h = 800, 400, 600
    ck, kw = _two_layer_sample(n, d, h)
    c = S.gaussian_constants("tanh")
    z = np.array([0.3 + 0.1j, 1.0 + 0.1j, 2.0 + 0.1j, 3.5 + 0.1j])
    base = dict(gamma0=n / d, gamma1=n / h, t0=c.m2 - c.b**2, t1=c.b**2)
    ntk_kw = dict(base, A0=c.a - c.b**2, A1=c.b**2)
    kw_only = dict(base, t0=0.0, t1=0.0, A0=c.a - c.b**2, A1=c.b**2)
    for M, kwargs, tol in ((ck, base, 30 / n), (ck + kw, ntk_kw, 60 / n), (kw, kw_only, 30 / n)):
        lam = np.linalg.eigvalsh(M)
        assert S.stieltjes_distance(lam, S.fan_wang_stieltjes(z, **kwargs), z) < tol


def test_fan_wang_atom_and_total_mass():
    # CK with h < n has an atom 1 − h/n at 0: −iε·m(iε) → its mass; −z·m(z) → 1 (a probability law) as z → i∞;
    # the density is non-negative and vanishes beyond the support.
    c = S.gaussian_constants("tanh")
    kw = dict(gamma0=2.0, gamma1=4 / 3, t0=c.m2 - c.b**2, t1=c.b**2)
    eps = 1e-6
    mass0 = (-1j * eps * S.fan_wang_stieltjes(1j * eps, **kw)).real
    assert mass0 == pytest.approx(0.25, abs=1e-3)
    big = 1e5j
    assert complex(-big * S.fan_wang_stieltjes(big, **kw)) == pytest.approx(1.0, abs=1e-4)
    dens = S.fan_wang_density(np.linspace(0.05, 8, 400), eps=1e-3, **kw)
    assert np.all(dens >= 0) and np.all(dens[-50:] < 1e-3)


def test_fan_wang_reduces_to_scaled_mp_when_t_zero():
    z = np.array([1 + 0.2j, 2.5 + 0.05j])
    got = S.fan_wang_stieltjes(z, gamma0=2.0, gamma1=1.0, t0=0.0, t1=0.0, A0=0.3, A1=0.5)
    np.testing.assert_allclose(got, S.mp_stieltjes((z - 0.3) / 0.5, 2.0) / 0.5, rtol=1e-12)


def test_fan_wang_empirical_g_matches_mp_for_large_sample():
    rng = np.random.default_rng(3)
    n, d = 1200, 600
    X = rng.standard_normal((n, d))
    g_eigs = np.linalg.eigvalsh(X @ X.T / d)
    c = S.gaussian_constants("tanh")
    kw = dict(gamma0=n / d, gamma1=1.5, t0=c.m2 - c.b**2, t1=c.b**2)
    z = np.array([1 + 0.1j, 2 + 0.1j])
    a = S.fan_wang_stieltjes(z, **kw)
    b = S.fan_wang_stieltjes(z, g_eigenvalues=g_eigs, **kw)
    assert np.max(np.abs(a - b)) < 30 / n


def test_fan_wang_bad_input():
    with pytest.raises(ValueError, match="upper half-plane"):
        S.fan_wang_stieltjes(1.0, gamma0=1, gamma1=1, t0=0.1, t1=0.3)
    with pytest.raises(ValueError, match="t1 \\+ A1"):
        S.fan_wang_stieltjes(1 + 1j, gamma0=1, gamma1=1, t0=0.1, t1=0.0)
    with pytest.raises(ValueError, match="gamma0"):
        S.fan_wang_stieltjes(1 + 1j, gamma0=0, gamma1=1, t0=0.1, t1=0.3)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: S.mp_density(np.nan, 0.5), ValueError, "x must be finite"),
        (lambda: S.mp_density([0.5, np.inf], 0.5), ValueError, "x must be finite"),
        (lambda: S.mp_density(1.0 + 0.5j, 0.5), TypeError, "x must be real points"),
        (lambda: S.mp_stieltjes(1.0, 0.5), ValueError, "on the support"),  # real z on [0.086, 2.914]
        (lambda: S.mp_stieltjes(0.0, 2.0), ValueError, "on the support"),  # the atom at 0 (c > 1)
        (lambda: S.mp_stieltjes(1.0 - 0.1j, 0.5), ValueError, "upper half-plane"),
        (lambda: S.mp_stieltjes(complex(np.nan, 1.0), 0.5), ValueError, "z must be finite"),
        (lambda: S.empirical_stieltjes(np.array([1.0, 3.0]), 2.0), ValueError, "upper half-plane"),
        (lambda: S.empirical_stieltjes(np.array([1.0, 3.0]), complex(np.nan, 1)), ValueError, "z must be finite"),
        (lambda: S.empirical_stieltjes(np.array([1.0, np.nan]), 1j), ValueError, "eigenvalues must be finite"),
        (lambda: S.stieltjes_distance([1.0, 3.0], [0.5j], [2.0]), ValueError, "upper half-plane"),
        (lambda: S.stieltjes_distance([1.0, np.nan], [0.5j], [1j]), ValueError, "eigenvalues must be finite"),
        (lambda: S.stieltjes_distance([1.0, 3.0], [np.nan], [1j]), ValueError, "limit_stieltjes must be finite"),
        (lambda: S.stieltjes_distance([1.0, 3.0], [1j, 1j], [1j]), ValueError, "one value per point"),
        (
            lambda: S.fan_wang_stieltjes(complex(np.nan, 0.1), gamma0=1, gamma1=1, t0=0.1, t1=0.3),
            ValueError,
            "z must be finite",
        ),
        (lambda: S.fan_wang_density([0.5, np.nan], gamma0=1, gamma1=1, t0=0.1, t1=0.3), ValueError, "x must be finite"),
    ],
)
def test_host_spectra_reject_nan_and_real_points_on_the_support(call, exc, match):
    # each of these used to return 0, NaN or one boundary value of the transform without a word
    with pytest.raises(exc, match=match):
        call()


def test_mp_stieltjes_real_points_off_the_support_match_quadrature():
    c = 0.5
    lo, hi = S.mp_support(c)
    for z in (hi + 1.0, lo / 2, -1.0):  # -1/z at large |z|; by quadrature of the density (no atom for c < 1)
        val = scipy.integrate.quad(lambda x, z=z: S.mp_density(x, c) / (x - z), lo, hi, limit=200)[0]
        assert abs(complex(S.mp_stieltjes(z, c)) - val) < 1e-7


def test_limit_density_rejects_nan_grid():
    from jaxcompare import lwr

    with pytest.raises(ValueError, match="x must be finite"):
        lwr.limit_density(lwr.LWRConfig(n=20, d=10, h=15), [0.5, np.nan])


# ---------------------------------------------------------------- BBP
def test_bbp_closed_forms():
    assert S.bbp_threshold(16.0) == pytest.approx(2.0)
    assert float(S.bbp_outlier(2.0, 1.0)) == pytest.approx(6.25)
    assert float(S.bbp_outlier(0.5, 1.0)) == pytest.approx(4.0)  # below threshold: the MP edge
    assert float(S.bbp_alignment(0.5, 1.0)) == 0.0
    assert float(S.bbp_alignment(2.0, 1.0)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="theta"):
        S.bbp_outlier(-1.0, 1.0)


def test_bbp_matches_spiked_sample():
    # Oracle: NumPy spiked Gaussian matrix. Finite-size fluctuations of the outlier are O(h^{-1/2}) (~3% here).
    rng = np.random.default_rng(4)
    h, d, theta = 1500, 1000, 1.6
    c = d / h
    u = rng.standard_normal(h)
    u /= np.linalg.norm(u)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    Wn = rng.standard_normal((h, d)) / np.sqrt(h) + theta * np.outer(u, w)
    lam, vec = np.linalg.eigh(Wn.T @ Wn)
    assert lam[-1] == pytest.approx(float(S.bbp_outlier(theta, c)), rel=0.05)
    assert abs(vec[:, -1] @ w) ** 2 == pytest.approx(float(S.bbp_alignment(theta, c)), abs=0.06)


# ---------------------------------------------------------------- power law
def _naive_fit(x, min_tail, ks="sup"):
    """Naive xmin scan over every distinct sample value (Clauset et al. 2009; ``plfit``'s ``cx = (0:n-1)/n``)."""
    x = np.sort(np.asarray(x, np.float64))
    n = len(x)
    best = None
    for i in range(n - min_tail + 1):
        if i > 0 and x[i] == x[i - 1]:
            continue  # the tail x >= x_i starts at the first copy
        tail = x[i:]
        ni = len(tail)
        s = np.sum(np.log(tail / x[i]))
        if s <= 0:
            continue
        a = 1 + ni / s
        F = 1 - (tail / x[i]) ** (1 - a)
        below = (tail[None, :] < tail[:, None]).sum(1)  # #{tail < t}: F̂(t⁻) · ni (a tied block steps once)
        upto = (tail[None, :] <= tail[:, None]).sum(1)  # #{tail <= t}: F̂(t) · ni
        D = np.max(np.abs(F - below / ni))
        if ks == "sup":
            D = max(D, np.max(np.abs(F - upto / ni)))
        if best is None or D < best[2]:
            best = (a, x[i], D, ni)
    return best


def test_powerlaw_fit_matches_naive_scan_and_scipy_ks():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(0.2, 1.0, 100), 1.0 + rng.pareto(1.5, 250)])
    fit = S.powerlaw_fit(x, ks="sup", min_tail=10, max_candidates=None)
    a, xmin, D, nt = _naive_fit(x, 10, "sup")
    assert float(fit.alpha) == pytest.approx(a, rel=1e-10)
    assert float(fit.xmin) == xmin
    assert float(fit.ks) == pytest.approx(D, rel=1e-10)
    assert int(fit.n_tail) == nt
    assert float(fit.sigma) == pytest.approx((a - 1) / np.sqrt(nt))
    tail = np.sort(x)[np.sort(x) >= xmin]
    ks = scipy.stats.kstest(tail, lambda t: 1 - (t / xmin) ** (1 - a)).statistic
    assert float(fit.ks) == pytest.approx(ks, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_powerlaw_fit_data_point_ks_matches_naive_scan(seed):
    # the default convention: KS distance at the data points, as plfit and the powerlaw package
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.lognormal(0.0, 0.5, 300), 2.0 * (1.0 + rng.pareto(1.2, 120))])
    fit = S.powerlaw_fit(x, min_tail=5, max_candidates=None)
    a, xmin, D, nt = _naive_fit(x, 5, "data")
    assert float(fit.xmin) == xmin
    assert int(fit.n_tail) == nt
    assert float(fit.alpha) == pytest.approx(a, rel=1e-10)
    assert float(fit.ks) == pytest.approx(D, rel=1e-10)
    # closed-form MLE at the chosen xmin (Clauset et al. eq. 3.1)
    tail = x[x >= xmin]
    assert float(fit.alpha) == pytest.approx(1 + tail.size / np.sum(np.log(tail / xmin)), rel=1e-10)


def test_powerlaw_fit_ties_and_conventions_at_same_xmin():
    # tied values: the tail is every point >= xmin; one xmin forced (min_tail = N) gives the same alpha in both
    rng = np.random.default_rng(3)
    x = np.round(1.0 + rng.pareto(1.5, 200), 1)
    for ks in ("data", "sup"):
        fit = S.powerlaw_fit(x, ks=ks, min_tail=5, max_candidates=None)
        a, xmin, D, nt = _naive_fit(x, 5, ks)
        assert float(fit.xmin) == xmin and int(fit.n_tail) == nt == np.sum(x >= xmin)
        assert float(fit.ks) == pytest.approx(D, rel=1e-10)
    whole = [S.powerlaw_fit(x, ks=ks, min_tail=x.size) for ks in ("data", "sup")]
    assert float(whole[0].alpha) == float(whole[1].alpha)
    assert float(whole[0].alpha) == pytest.approx(1 + x.size / np.sum(np.log(x / x.min())), rel=1e-10)


def test_powerlaw_fit_recovers_exponent_jit_vmap_dtype():
    # |α̂ − α| < 4σ: false-failure probability ≈ 6e-5 per sample for a random seed (asymptotic normality).
    keys = jax.random.split(jax.random.key(0), 3)
    xs = jax.vmap(lambda k: jax.random.pareto(k, 1.5, (3000,)))(keys)
    fits = jax.vmap(lambda x: S.powerlaw_fit(x, max_candidates=300))(xs)
    for i in range(3):
        one = S.powerlaw_fit(xs[i], max_candidates=300)
        assert float(fits.alpha[i]) == pytest.approx(float(one.alpha), rel=1e-10)
        assert abs(float(one.alpha) - 2.5) < 4 * float(one.sigma)
    f32 = S.powerlaw_fit(xs[0].astype(jnp.float32), max_candidates=300)
    assert f32.alpha.dtype == jnp.float32
    assert float(f32.alpha) == pytest.approx(float(fits.alpha[0]), rel=1e-3)


def test_powerlaw_gof_accepts_power_law_and_rejects_uniform():
    # For a true power law p ~ U(0, 1): P(p < 0.05) = 5% for a random seed (fixed seed here);
    # the uniform sample with a forced 500-point tail is rejected with probability ≈ 1.
    x = jax.random.pareto(jax.random.key(1), 1.5, (800,))
    gof = S.powerlaw_gof(jax.random.key(2), x, n_boot=60, max_candidates=100)
    assert float(gof.p_value) > 0.05
    assert gof.ks_boot.shape == (60,)
    u = jax.random.uniform(jax.random.key(3), (800,), minval=1.0, maxval=2.0)
    bad = S.powerlaw_gof(jax.random.key(4), u, n_boot=30, min_tail=500, max_candidates=50)
    assert float(bad.p_value) < 0.05
    again = S.powerlaw_gof(jax.random.key(2), x, n_boot=60, max_candidates=100)
    assert float(again.p_value) == float(gof.p_value)  # same key, same result


def test_powerlaw_bad_input():
    with pytest.raises(ValueError, match="positive"):
        S.powerlaw_fit(np.array([0.0, 1.0, 2.0] * 10))
    with pytest.raises(ValueError, match="min_tail"):
        S.powerlaw_fit(np.ones(5) + np.arange(5), min_tail=10)
    with pytest.raises(ValueError, match="finite"):
        S.powerlaw_fit(np.array([1.0, np.nan] * 10))
    with pytest.raises(TypeError, match="key"):
        S.powerlaw_gof(None, np.arange(1, 30.0))
    with pytest.raises(ValueError, match="distinct"):
        S.powerlaw_fit(np.full(50, 3.0))  # constant data: no tail (the MLE would be infinite)
    with pytest.raises(ValueError, match="distinct"):
        S.powerlaw_gof(jax.random.key(0), np.array([1.0, 2.0] * 20))
    with pytest.raises(ValueError, match="ks"):
        S.powerlaw_fit(np.arange(1, 30.0), ks="two-sided")
    # squared singular values of an orthogonal matrix: distinct only by rounding, still constant (α would be ~1e16)
    q = np.linalg.svd(np.linalg.qr(np.random.default_rng(7).standard_normal((40, 40)))[0], compute_uv=False) ** 2
    with pytest.raises(ValueError, match="no admissible tail"):
        S.powerlaw_fit(q)


def test_powerlaw_fit_traced_constant_sample_is_flagged_not_infinite():
    fit = jax.jit(lambda x: S.powerlaw_fit(x))(jnp.full(30, 2.0))
    assert np.isnan(float(fit.alpha)) and int(fit.n_tail) == 0


@pytest.mark.parametrize("c", [1e-14, 1e-12, 1e-10, 1e-6])
def test_mp_stieltjes_small_ratio_without_cancellation(c):
    """For a small ratio the law is nearly a point mass at 1 with variance c (third central moment c²), so
    m(−1) = E[1/(1 + x)] = 1/2 + c/8 − c²/16 + …; the textbook numerator 1 − c − z + √·√ cancelled (0.5218 at
    c = 1e-14, 4% off)."""
    m = S.mp_stieltjes(-1.0, c)
    assert abs(m.real - (0.5 + c / 8 - c * c / 16)) < 1e-13 and m.imag == 0
    w = S.mp_stieltjes(np.array([-3.0, 5.0 + 0.5j]), c)  # farther points: 1/(1 − z) to O(c)
    np.testing.assert_allclose(w, 1 / (1 - np.array([-3.0, 5.0 + 0.5j])), rtol=10 * c + 1e-13)


def test_fan_wang_reports_non_convergence_and_checks_g_eigenvalues():
    """One iteration at damping 1e-4 returned −0.938+0.721j for a converged −0.897+0.432j without a word; now a
    SolverWarning says so. ``g_eigenvalues`` must be real, finite, non-empty and (up to rounding) non-negative:
    complex values lost their imaginary part, strings and negatives were accepted."""
    from jaxcompare import SolverWarning

    c = S.gaussian_constants("tanh")
    kw = dict(gamma0=2.0, gamma1=1.5, t0=c.m2 - c.b**2, t1=c.b**2)
    ref = S.fan_wang_stieltjes(1 + 1e-3j, **kw)
    with pytest.warns(SolverWarning, match="did not converge"):
        rough = S.fan_wang_stieltjes(1 + 1e-3j, damping=1e-4, max_iter=1, **kw)
    assert abs(rough - ref) > 0.1
    for bad, exc, match in (
        (np.array([1.0, 2.0 + 1j]), TypeError, "real points"),
        (["a", "b"], TypeError, "numeric array"),
        (np.array([-1.0, 2.0]), ValueError, r"\(>= 0\)"),
        (np.array([]), ValueError, "must not be empty"),
        (np.array([1.0, np.nan]), ValueError, "finite"),
    ):
        with pytest.raises(exc, match=match):
            S.fan_wang_stieltjes(1 + 0.1j, g_eigenvalues=bad, **kw)


def test_bbp_at_huge_spikes_and_mp_median_of_array_scalars():
    """θ⁴ overflowed beyond θ ≈ 1e77 (NaN outlier and alignment); the closed forms are ≈ θ² and → 1. ``theta=True``
    was read as 1; ``mp_median`` of a NumPy/JAX scalar failed in its cache ("unhashable type")."""
    th = np.array([1e80, 1e150])
    np.testing.assert_allclose(S.bbp_outlier(th, 0.5), th**2 * (1 + 1.5 / th**2), rtol=1e-12)
    np.testing.assert_allclose(S.bbp_alignment(th, 0.5), 1.0, rtol=1e-12)
    assert S.bbp_outlier(2.0, 1.0) == 6.25 and round(float(S.bbp_alignment(2.0, 1.0)), 12) == 0.75
    with pytest.raises(TypeError, match="booleans"):
        S.bbp_outlier(True, 1.0)
    assert S.mp_median(np.array(0.5)) == S.mp_median(0.5) == S.mp_median(jnp.float32(0.5))
    with pytest.raises(TypeError, match="ratio must be a real number"):
        S.mp_median(True)


def test_mp_bulk_fit_keeps_float64_eigenvalues_without_x64():
    """Without x64, NumPy float64 eigenvalues went through float32: ×1e39 was "94 infinite entries" and ×1e-42
    denormals moved σ²; the host fit now reads them at their own precision (scale invariance is the oracle)."""
    import os
    import subprocess
    import sys

    child = (
        "import json, numpy as np, jaxcompare.spectra as S\n"
        "W = np.random.default_rng(0).standard_normal((400, 100)); lam = np.linalg.eigvalsh(W.T @ W / 400)\n"
        "print(json.dumps([S.mp_bulk_fit(lam * s, 400, 100).sigma2 / s for s in (1.0, 1e39, 1e-42)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    s = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(s, s[0], rtol=1e-12)
