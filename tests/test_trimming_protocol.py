"""Bootstrap protocol (ensemble_alpha_hat), grid compatibility, Wasserstein analogue, and input validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxcompare as jc

# all ensemble calls share shapes and static settings (K = 10 models, T = 400 points, 3 candidates, 4 rounds) so
# that they share one compilation
CAND, REF, N_BOOT = np.arange(3), np.arange(3, 10), 4


def _ensemble_scores(seed=0, K=10, T=400, contaminate=None):
    """Logit gaps of K models: shared signal + model-specific noise; model `contaminate` is shifted on 30% of points."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 2, size=T)
    s = signal[None, :] + rng.normal(0, 0.5, size=(K, T))
    if contaminate is not None:
        bad = rng.random(T) < 0.3
        s[contaminate, bad] += 8.0
    return s


# ----------------------------------------------------------------------------------------------------------------
# ensemble_alpha_hat
# ----------------------------------------------------------------------------------------------------------------
def test_ensemble_matches_public_functions_round_by_round():
    s = _ensemble_scores(contaminate=1)
    cand, ref = CAND, REF
    key = jax.random.key(7)
    res = jc.ensemble_alpha_hat(key, s, candidates=cand, reference=ref, n_boot=N_BOOT)
    assert res.boot.shape == (3, N_BOOT) and res.ks.shape == (3, N_BOOT) and res.alpha_hat.shape == (3,)
    np.testing.assert_allclose(np.asarray(res.alpha_hat), np.asarray(res.boot).mean(axis=1), rtol=0, atol=1e-15)
    delta = jc.ks_threshold(200, 200, level=0.01)  # default: n = T // 2 points per half, published DKW level
    assert float(res.threshold) == pytest.approx(delta, rel=1e-15)
    assert res.sample_size == 200 and bool(jnp.all(res.converged))
    assert float(np.max(res.boot)) > 0  # the contaminated model needs trimming: the check below is not vacuous
    keys = jax.random.split(key, N_BOOT)
    for b in range(N_BOOT):
        x1, x2 = jc.bootstrap_halves(keys[b], s.shape[1], 200)
        x1, x2 = np.asarray(x1), np.asarray(x2)
        ref_sample = s[ref][:, x2].ravel()  # pooled reference = average of the reference models' eCDFs
        for i, c in enumerate(cand):
            want_ks = scipy.stats.ks_2samp(s[c, x1], ref_sample).statistic  # independent oracle
            assert float(res.ks[i, b]) == pytest.approx(want_ks, abs=1e-12)
            want = float(jc.alpha_hat(s[c, x1], ref_sample, threshold=delta))
            assert float(res.boot[i, b]) == pytest.approx(want, abs=1e-12)


def test_ensemble_reproducible_and_batching_invariant():
    s = _ensemble_scores(seed=1)
    kw = dict(candidates=CAND, reference=REF, n_boot=N_BOOT)
    a = jc.ensemble_alpha_hat(jax.random.key(0), s, **kw)
    b = jc.ensemble_alpha_hat(jax.random.key(0), s, round_batch=None, **kw)
    c = jc.ensemble_alpha_hat(jax.random.key(1), s, **kw)
    np.testing.assert_array_equal(np.asarray(a.boot), np.asarray(b.boot))
    np.testing.assert_array_equal(np.asarray(a.ks), np.asarray(b.ks))
    assert not np.array_equal(np.asarray(a.ks), np.asarray(c.ks))
    # a frozen pytree: flattens and maps like one
    leaves = jax.tree_util.tree_leaves(a)
    assert len(leaves) == 6  # alpha_hat, boot, ks, threshold, converged, result
    with pytest.raises(dataclasses_frozen_error()):
        a.alpha_hat = None


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_ensemble_flags_the_contaminated_candidate():
    """Model 2 is shifted by 8 logits on ~30% of test points: its alpha-hat is well above the clean candidates'.
    Deterministic (fixed seeds). Margin: the shifted model needs about 0.3 - delta = 0.13 of trimming
    (delta = 0.168 at n = 200), the clean ones less (their KS distance is mostly below delta; 0.07 at most over
    the seeds tried)."""
    s = _ensemble_scores(seed=2, contaminate=2)
    res = jc.ensemble_alpha_hat(jax.random.key(3), s, candidates=CAND, reference=REF, n_boot=N_BOOT)
    a = np.asarray(res.alpha_hat)
    assert a[2] > 0.1
    assert a[2] > np.max(a[:2]) + 0.05


def test_bootstrap_halves_are_disjoint_and_in_range():
    for seed in range(5):
        x1, x2 = jc.bootstrap_halves(jax.random.key(seed), 101, 60)
        x1, x2 = np.asarray(x1), np.asarray(x2)
        assert x1.shape == x2.shape == (60,)
        assert set(x1).isdisjoint(x2)
        assert x1.min() >= 0 and max(x1.max(), x2.max()) < 101


def test_ensemble_float32_kept():
    s = _ensemble_scores(seed=4).astype(np.float32)
    res = jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=CAND, reference=REF, n_boot=N_BOOT)
    assert res.boot.dtype == jnp.float32 and res.alpha_hat.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(candidates=[0, 1], reference=[1, 2]), "disjoint"),
        (dict(candidates=[0, 10], reference=[1, 2]), r"candidates must lie in \[0, 10\)"),
        (dict(candidates=[0.0, 1.0], reference=[2, 3]), "integer model indices"),
        (dict(candidates=[], reference=[2, 3]), "non-empty"),
        (dict(candidates=[0, 0], reference=[2, 3]), "repeat"),
        (dict(candidates=[0], reference=[2], sample_size=300), "sample_size must be <= 200"),
        (dict(candidates=[0], reference=[2], n_boot=0), "n_boot must be >= 1"),
        (dict(candidates=[0], reference=[2], level=1.0), r"level must lie in \(0, 1\)"),
        (dict(candidates=[0], reference=[2], threshold=-0.1), r"threshold must lie in \(0, 1\]"),
        (dict(candidates=[0], reference=[2], method="exact"), "method must be one of"),
    ],
)
def test_ensemble_bad_input(kwargs, match):
    s = _ensemble_scores()
    with pytest.raises((ValueError, TypeError), match=match):
        jc.ensemble_alpha_hat(jax.random.key(0), s, **kwargs)


def test_ensemble_bad_scores_and_key():
    s = _ensemble_scores()
    s[3, 5] = np.nan
    with pytest.raises(ValueError, match="scores must be finite"):
        jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=[0], reference=[1])
    with pytest.raises(TypeError, match="key"):
        jc.ensemble_alpha_hat(None, _ensemble_scores(), candidates=[0], reference=[1])
    with pytest.raises(ValueError, match="2 dimensions"):
        jc.ensemble_alpha_hat(jax.random.key(0), np.ones(10), candidates=[0], reference=[1])


# ----------------------------------------------------------------------------------------------------------------
# grid compatibility with the published search
# ----------------------------------------------------------------------------------------------------------------
def test_grid_alpha_equals_grid_search():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=50)
    grid = np.array(jc.PUBLISHED_ALPHA_GRID)
    assert len(grid) == 13
    for k in range(0, 40, 3):
        cand = np.concatenate([rng.normal(size=40 - k), rng.normal(5, 1, size=k)])
        delta = 0.1
        # the published procedure: smallest grid level that passes, 0.5 if none does
        passing = [a for a in grid if float(jc.trimmed_ks(cand, ref, a)) <= delta]
        want = passing[0] if passing else 0.5
        got = float(jc.grid_alpha(jc.alpha_hat(cand, ref, threshold=delta)))
        assert got == want


# ----------------------------------------------------------------------------------------------------------------
# w1_excess
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_w1_excess_zero_threshold_is_wasserstein(seed):
    rng = np.random.default_rng(seed)
    cand = rng.normal(size=40) if seed % 2 else rng.integers(0, 5, 40).astype(float)
    ref = rng.normal(0.3, 1.2, size=50) if seed % 2 else rng.integers(0, 7, 50).astype(float)
    want = scipy.stats.wasserstein_distance(cand, ref)
    assert float(jc.w1_excess(cand, ref, 0.0)) == pytest.approx(want, abs=1e-12)


def test_w1_excess_against_dense_quadrature_and_monotone():
    rng = np.random.default_rng(1)
    cand, ref = rng.normal(size=40), rng.normal(0.5, 1, size=50)
    x = np.linspace(min(cand.min(), ref.min()) - 1, max(cand.max(), ref.max()) + 1, 400001)
    F = np.searchsorted(np.sort(cand), x, side="right") / cand.size
    F0 = np.searchsorted(np.sort(ref), x, side="right") / ref.size
    dx = x[1] - x[0]
    prev = np.inf
    for delta in (0.0, 0.05, 0.1, 0.2, 0.5):
        want = np.sum(np.maximum(np.abs(F - F0) - delta, 0)[:-1]) * dx  # Riemann sum, error <= (#jumps) dx
        got = float(jc.w1_excess(cand, ref, delta))
        assert got == pytest.approx(want, abs=90 * dx)
        assert got <= prev + 1e-15
        prev = got
    assert float(jc.w1_excess(cand, ref, scipy.stats.ks_2samp(cand, ref).statistic)) == pytest.approx(0, abs=1e-15)


def test_w1_excess_closed_form_and_transforms():
    # two point masses a < b: |F - F0| = 1 on [a, b)
    assert float(jc.w1_excess(np.array([0.0]), np.array([2.0]), 0.25)) == pytest.approx(1.5, abs=1e-15)
    # translation invariance and scale equivariance
    rng = np.random.default_rng(2)
    cand, ref = rng.normal(size=40), rng.normal(size=50)
    e = float(jc.w1_excess(cand, ref, 0.1))
    assert float(jc.w1_excess(3 * cand + 1, 3 * ref + 1, 0.1)) == pytest.approx(3 * e, rel=1e-12)
    cands = rng.normal(size=(5, 40))
    loop = np.array([float(jc.w1_excess(c, ref, 0.1)) for c in cands])
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda c: jc.w1_excess(c, ref, 0.1))(cands)), loop, atol=1e-14)
    assert float(jax.jit(jc.w1_excess)(cands[0], ref, 0.1)) == pytest.approx(loop[0], abs=1e-14)
    e32 = jc.w1_excess(cands[0].astype(np.float32), ref.astype(np.float32), np.float32(0.1))
    assert e32.dtype == jnp.float32 and float(e32) == pytest.approx(loop[0], abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# bad input for the sample-level functions
# ----------------------------------------------------------------------------------------------------------------
GOOD = np.linspace(0, 1, 10)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: jc.trimmed_ks(np.array([0.0, np.nan]), GOOD, 0.1), ValueError, "candidate must be finite"),
        (lambda: jc.trimmed_ks(GOOD, np.array([np.inf, 1.0]), 0.1), ValueError, "reference must be finite"),
        (lambda: jc.trimmed_ks(np.array([]), GOOD, 0.1), ValueError, "candidate must not be empty"),
        (lambda: jc.trimmed_ks(GOOD, GOOD, 1.0), ValueError, r"alpha must lie in \[0, 1\)"),
        (lambda: jc.trimmed_ks(GOOD, GOOD, -0.1), ValueError, r"alpha must lie in \[0, 1\)"),
        (lambda: jc.trimmed_ks(GOOD[None], GOOD, 0.1), ValueError, "candidate must have 1 dimensions"),
        (lambda: jc.alpha_hat(GOOD, GOOD, threshold=0.0), ValueError, r"threshold must lie in \(0, 1\]"),
        (lambda: jc.alpha_hat(GOOD, GOOD, level=0.0), ValueError, r"level must lie in \(0, 1\)"),
        (lambda: jc.alpha_hat(GOOD, np.array([]), threshold=0.1), ValueError, "reference must not be empty"),
        (lambda: jc.alpha_hat(GOOD, GOOD, threshold=np.ones(2)), ValueError, "threshold must have 0 dimensions"),
        (lambda: jc.ks_threshold(0, 10), ValueError, "n must be >= 1"),
        (lambda: jc.ks_threshold(10, 10, level=1.5), ValueError, r"level must lie in \(0, 1\)"),
        (lambda: jc.ks_threshold(10, 10, method="exact"), ValueError, "method must be one of"),
        (lambda: jc.ks_threshold(10.0, 10), TypeError, "n must be an integer"),
        (lambda: jc.w1_excess(GOOD, GOOD, -0.1), ValueError, r"threshold must lie in \[0, inf\]"),
        (lambda: jc.w1_excess(GOOD, np.array([1.0, np.nan]), 0.1), ValueError, "reference must be finite"),
        (lambda: jc.grid_alpha(0.1, grid=[0.2, 0.1]), ValueError, "strictly increasing"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------------
# issue 15: too few points for the default threshold; grid_alpha ranges; issue 13: key first
# ----------------------------------------------------------------------------------------------------------------
def _dkw_equal(n, level=0.01):
    # the Wei & Dudley bound written out here (independent of ks_threshold)
    return np.sqrt(np.log(2 / level) / n) + 1 / n


def test_default_threshold_above_one_is_an_error_naming_the_points_needed():
    need = next(n for n in range(1, 100) if _dkw_equal(n) < 1)  # 8 at level 0.01
    ref = np.linspace(0.0, 1.0, need - 1)
    far = ref + 100.0  # 100 standard deviations away: must never read as "alpha_hat = 0"
    with pytest.raises(ValueError, match=rf"at least {need} points"):
        jc.alpha_hat(far, ref)
    assert float(jc.alpha_hat(np.linspace(0, 1, need) + 100.0, np.linspace(0, 1, need))) == 1.0
    s = np.concatenate([np.zeros((3, 14)), np.full((1, 14), 100.0)])
    with pytest.raises(ValueError, match=rf"sample_size >= {need}, i.e. >= {2 * need} test points"):
        jc.ensemble_alpha_hat(jax.random.key(0), s, candidates=[3], reference=[0, 1, 2], n_boot=2)
    res = jc.ensemble_alpha_hat(
        jax.random.key(0), np.concatenate([s, s], axis=1), candidates=[3], reference=[0, 1, 2], n_boot=2
    )
    assert float(res.alpha_hat[0]) == 1.0  # 16 test points suffice: the far candidate cannot pass
    # an explicit threshold is the caller's choice and stays allowed
    assert float(jc.alpha_hat(far, ref, threshold=1.0)) == 0.0


@pytest.mark.parametrize(
    "alpha, grid", [([0.1, 1.5], None), ([-0.2], None), ([0.1], [0.0, 0.5, 2.0]), ([0.1], [-1.0, 0.5])]
)
def test_grid_alpha_rejects_levels_outside_unit_interval(alpha, grid):
    kw = {} if grid is None else dict(grid=grid)
    with pytest.raises(ValueError, match=r"(alpha|grid) must hold trimming levels in \[0, 1\]"):
        jc.grid_alpha(jnp.asarray(alpha), **kw)
    with pytest.raises(ValueError, match=r"cap must lie in \[0, 1\]"):
        jc.grid_alpha(jnp.asarray([0.1]), cap=2.0)


def test_ensemble_key_first_and_deprecated_keyword_agree():
    s = _ensemble_scores()
    kw = dict(candidates=CAND, reference=REF, n_boot=N_BOOT)
    new = jc.ensemble_alpha_hat(jax.random.key(5), s, **kw)
    with pytest.warns(DeprecationWarning, match=r"ensemble_alpha_hat\(key, scores"):
        old = jc.ensemble_alpha_hat(s, key=jax.random.key(5), **kw)
    np.testing.assert_array_equal(np.asarray(new.boot), np.asarray(old.boot))
    assert new.result.tolist() == [0, 0, 0]
    with pytest.raises(TypeError, match="key twice"):
        jc.ensemble_alpha_hat(jax.random.key(5), s, key=jax.random.key(5), **kw)
    with pytest.raises(TypeError, match="missing required positional"):
        jc.ensemble_alpha_hat(s, **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'seed'"):
        jc.ensemble_alpha_hat(jax.random.key(5), s, seed=3, **kw)
