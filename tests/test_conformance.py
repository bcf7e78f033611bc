"""API conformance: every public function, checked from the facts its registry entry declares.

The registry (``tests/_conformance/``: one :class:`Case` per public function) declares small valid inputs, which
arguments are arrays and of what kind, and whether the function is documented to run under ``jit``/``vmap`` and to
keep the floating dtype. The checks below are derived from it:

* the valid example runs and gives finite floating outputs;
* each array argument given NaN, inf, an empty array, a wrong rank or a wrong dtype (and the kind's own bad values:
  probabilities outside [0, 1], labels < 0, ...) raises ``ValueError``/``TypeError``/``FloatingPointError`` whose
  message names the argument;
* ``jit == eager``, ``vmap == loop``, float32 in → float32 out and float64 in → float64 out, where documented;
* ``jaxcompare.checked(jax.jit(f))`` reports a NaN input, where documented.

``test_every_public_name_is_covered`` fails when a public name has neither an entry nor a justified exclusion.
Property-based tests (hypothesis) of the numerical kernels against independent oracles follow at the end.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from _conformance import CASES, EXCLUDED
from _conformance._spec import ERRORS, KIND_PROBES, bad_value, float_leaves, is_key, leaves, to_float32
from hypothesis import HealthCheck, given, settings
from hypothesis import assume as hypothesis_assume
from hypothesis import strategies as st
from jax.experimental import checkify

import jaxcompare as jc

BY_NAME = {c.name: c for c in CASES}
CHECKS = ("jit", "vmap", "float32", "float64", "checked")


def public_names() -> dict[str, object]:
    """``{qualified name: object}`` of every public name: ``jaxcompare.__all__`` and every public subpackage's."""
    mods = [jc] + [
        importlib.import_module(f"jaxcompare.{m.name}")
        for m in pkgutil.iter_modules(jc.__path__)
        if m.ispkg and not m.name.startswith("_")
    ]
    out = {}
    for mod in mods:
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not inspect.ismodule(obj):
                out[f"{mod.__name__}.{name}"] = obj
    return out


def test_every_public_name_is_covered():
    names = public_names()
    covered = {id(names[n]) for n in list(BY_NAME) + list(EXCLUDED) if n in names}
    missing = sorted(n for n, obj in names.items() if id(obj) not in covered)
    assert not missing, f"public names with no conformance Case and no justified exclusion: {missing}"
    stale = sorted(n for n in list(BY_NAME) + list(EXCLUDED) if n not in names)
    assert not stale, f"registry/exclusions name things that are not public: {stale}"
    both = sorted(set(BY_NAME) & set(EXCLUDED))
    assert not both, f"both registered and excluded: {both}"
    assert all(isinstance(r, str) and len(r) > 10 for r in EXCLUDED.values()), "each exclusion needs a reason"
    funcs = [n for n, o in names.items() if inspect.isfunction(inspect.unwrap(o)) and n in EXCLUDED]
    assert all(("plot" in n or "entry point" in EXCLUDED[n]) for n in funcs), f"functions excluded: {funcs}"


def test_registry_is_consistent():
    assert len(BY_NAME) == len(CASES), "one Case per public function"
    for case in CASES:
        ex = example(case)
        for arg in case.args:
            assert arg.name in ex, (case.name, arg.name)
            assert arg.kind in KIND_PROBES, (case.name, arg.kind)
            assert set(arg.xfail) <= set(arg.probe_names()), (case.name, arg.name, arg.xfail)
            assert all(isinstance(r, str) and r for r in (*arg.skip.values(), *arg.xfail.values()))
        assert set(case.xfail) <= set(CHECKS), (case.name, case.xfail)
        for flag in (case.jit, case.vmap, case.dtype, case.checked):
            assert flag is True or isinstance(flag, tuple) or (isinstance(flag, str) and flag), (case.name, flag)
        if isinstance(case.vmap, tuple):
            assert set(case.vmap) <= set(ex), (case.name, case.vmap)
        if case.run is not True:
            assert isinstance(case.run, str) and "tests/" in case.run, (case.name, "say where it is tested")
            assert all(isinstance(f, str) for f in (case.jit, case.vmap, case.dtype, case.checked)), case.name


# --- helpers --------------------------------------------------------------------------------------------------------


@functools.cache
def _example(name: str, seed: int) -> dict:
    return BY_NAME[name].make(np.random.default_rng(seed))


def example(case, seed: int = 0) -> dict:
    """The case's valid example (built once per seed; the checks copy the dict and never write into its arrays)."""
    return dict(_example(case.name, seed))


@functools.cache
def baseline(name: str):
    case = BY_NAME[name]
    ex = example(case)
    return ex, case.invoke(ex)


def outputs(case, result):
    return leaves(case.out(result) if case.out is not None else result)


def assert_same(case, got, want, what: str):
    g, w = outputs(case, got), outputs(case, want)
    assert len(g) == len(w), (case.name, what, len(g), len(w))
    for i, (a, b) in enumerate(zip(g, w)):
        if isinstance(b, (str, bytes)) or b is None:
            assert a == b, (case.name, what, i)
        elif is_key(b):
            assert np.array_equal(jax.random.key_data(a), jax.random.key_data(b)), (case.name, what, i)
        else:
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape, (case.name, what, i, a.shape, b.shape)
            if np.issubdtype(b.dtype, np.inexact):
                np.testing.assert_allclose(a, b, rtol=case.rtol, atol=case.rtol, err_msg=f"{case.name} {what} #{i}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{case.name} {what} #{i}")


def _xfail(reason: str | None):
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def _names(flag: str) -> list:
    out = []
    for case in CASES:
        value = getattr(case, "dtype" if flag in ("float32", "float64") else flag)
        if value is True or isinstance(value, tuple):
            out.append(pytest.param(case.name, id=case.name, marks=_xfail(case.xfail.get(flag))))
    return out


# --- the valid example ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [c.name for c in CASES if c.run is True])
def test_valid_example(name):
    case = BY_NAME[name]
    _, result = baseline(name)
    for leaf in float_leaves(case.out(result) if case.out is not None else result):
        assert np.all(np.isfinite(np.asarray(leaf))), f"{name}: non-finite output for valid input"


# --- bad inputs -------------------------------------------------------------------------------------------------------


def _probe_params():
    out = []
    for case in CASES:
        for arg in case.args:
            for probe in arg.probe_names():
                pid = f"{case.name}:{arg.name}:{probe}"
                out.append(pytest.param(case.name, arg.name, probe, id=pid, marks=_xfail(arg.xfail.get(probe))))
    return out


def names_argument(message: str, text: str) -> bool:
    """The message names the argument: as a word; a one- or two-letter name (``a``, ``x1``) must also be used as a
    name (quoted, or followed by ``must``/``has``/``(``/``:``...), not as the English article."""
    if len(text) <= 2:
        follow = r"( must| has| and| is| of| should| needs| contains| are| =| \(|[,:=\[\]'`\")]|\.$)"
        return re.search(rf"(?<![\w]){re.escape(text)}{follow}", message) is not None
    return re.search(rf"(?<![\w]){re.escape(text)}(?![\w])", message) is not None


@pytest.mark.parametrize("name, arg_name, probe", _probe_params())
def test_bad_input_is_named(name, arg_name, probe):
    case = BY_NAME[name]
    arg = next(a for a in case.args if a.name == arg_name)
    ex = baseline(name)[0] if case.run is True else example(case)
    bad = dict(ex)
    bad[arg_name] = bad_value(arg, probe, ex[arg_name])
    with pytest.raises(ERRORS + case.errors) as info:
        case.invoke(bad)
    msg = str(info.value)
    texts = [arg.text]
    if isinstance(bad[arg_name], str) and os.sep in bad[arg_name]:  # a file argument: naming the file is enough
        texts.append(os.path.basename(bad[arg_name]))
    assert any(names_argument(msg, t) for t in texts), f"{type(info.value).__name__} does not name {texts}: {msg}"


# --- transforms -------------------------------------------------------------------------------------------------------


def _split(case, ex):
    names = case.traced_names()
    return {k: ex[k] for k in names}, {k: v for k, v in ex.items() if k not in names}


@functools.cache
def _jitted(name: str):
    case = BY_NAME[name]
    _, rest = _split(case, example(case))
    return jax.jit(lambda traced: case.invoke({**rest, **traced}))


@pytest.mark.parametrize("name", _names("jit"))
def test_jit_equals_eager(name):
    case = BY_NAME[name]
    ex, want = baseline(name)
    traced, _ = _split(case, ex)
    assert_same(case, _jitted(name)(traced), want, "jit")


@pytest.mark.parametrize("name", _names("vmap"))
def test_vmap_equals_loop(name):
    case = BY_NAME[name]
    ex0, ex1 = example(case, 0), example(case, 1)
    names = case.vmap

    def one(*vals):
        return case.invoke({**ex0, **dict(zip(names, vals))})

    batched = [jnp.stack([jnp.asarray(ex0[n]), jnp.asarray(ex1[n])]) for n in names]
    got = jax.vmap(one)(*batched)
    for i, ex in enumerate((ex0, ex1)):
        want = one(*(ex[n] for n in names))
        assert_same(case, jax.tree_util.tree_map(lambda v, i=i: v[i], got), want, f"vmap[{i}]")


@pytest.mark.parametrize("name", _names("float32"))
def test_float32_kept(name):
    case = BY_NAME[name]
    ex, _ = baseline(name)
    result = case.invoke(to_float32(ex))
    dtypes = {str(np.asarray(leaf).dtype) for leaf in float_leaves(case.out(result) if case.out else result)}
    assert dtypes == {"float32"}, f"{name}: float32 inputs gave {dtypes}"


@pytest.mark.parametrize("name", _names("float64"))
def test_float64_kept(name):
    case = BY_NAME[name]
    _, result = baseline(name)
    dtypes = {str(np.asarray(leaf).dtype) for leaf in float_leaves(case.out(result) if case.out else result)}
    assert dtypes == {"float64"}, f"{name}: float64 inputs (x64) gave {dtypes}"


@pytest.mark.parametrize("name", _names("checked"))
def test_checked_mode_reports_nan(name):
    """Under ``checked(jit(f))``, a NaN in the first traced floating argument raises, naming it."""
    case = BY_NAME[name]
    ex, _ = baseline(name)
    traced, _ = _split(case, ex)
    arg = next(a for a in case.args if a.name in traced and a.kind in ("float", "prob"))
    traced = {**traced, arg.name: bad_value(arg, "nan", ex[arg.name])}
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape(arg.text)):
        jc.checked(_jitted(name))(traced)


# --- properties of the numerical kernels (hypothesis), against oracles written here or SciPy -------------------------
# Fixed shapes, so that every example reuses one compiled program; values from small grids, so that ties are common.

PROPS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def grid_vector(n: int, values=(-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0)):
    return st.lists(st.sampled_from(values), min_size=n, max_size=n).map(np.array)


@PROPS
@given(grid_vector(11), grid_vector(11))
def test_kendall_tau_matches_scipy(x, y):
    hypothesis_assume(np.ptp(x) > 0 and np.ptp(y) > 0)
    want = scipy.stats.kendalltau(x, y, variant="b", method="asymptotic")
    np.testing.assert_allclose(float(jc.kendall_tau(x, y)), want.statistic, rtol=1e-10, atol=1e-12)
    res = jc.kendall_tau_test(x, y)
    np.testing.assert_allclose(float(res.statistic), want.statistic, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(res.pvalue), want.pvalue, rtol=1e-6, atol=1e-12)


def hsic_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - 1.0 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def hsic_unbiased(K, L):
    """Song et al. (2012), eq. 5: the unbiased HSIC estimator (zero diagonals)."""
    n = K.shape[0]
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def naive_cka(K, L, hsic):
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@PROPS
@given(grid_vector(14), grid_vector(14), st.booleans())
def test_cka_matches_numpy_hsic(f, g, debiased):
    F, G = f.reshape(7, 2), g.reshape(7, 2) + 0.25 * f.reshape(7, 2)
    K, L = F @ F.T, G @ G.T
    hsic = hsic_unbiased if debiased else hsic_biased
    hypothesis_assume(min(hsic(K, K), hsic(L, L)) > 1e-6)
    want = naive_cka(K, L, hsic)
    np.testing.assert_allclose(float(jc.cka(K, L, debiased=debiased)), want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(float(jc.linear_cka(F, G, debiased=debiased)), want, rtol=1e-8, atol=1e-10)


@PROPS
@given(
    grid_vector(10),
    grid_vector(12),
    st.sampled_from([1e-30, 1e-3, 0.5, 7.0, 1e4, 1e30]),
    st.sampled_from([0.0, -3.0, 100.0]),
    st.randoms(use_true_random=False),
)
def test_alpha_hat_and_trimmed_ks_invariances(c, r, scale, shift, rnd):
    """KS distances depend on the ranks only: a positive affine map of both samples, or reordering either sample,
    leaves α̂ and d_α unchanged (the shift only where it is exact at that scale)."""
    shift = shift if scale >= 1e-3 else 0.0
    a0 = float(jc.alpha_hat(c, r, threshold=0.2))
    d0 = float(jc.trimmed_ks(c, r, 0.1))
    pc, pr = np.array(rnd.sample(list(c), len(c))), np.array(rnd.sample(list(r), len(r)))
    for cc, rr in ((c * scale + shift, r * scale + shift), (pc, pr)):
        assert float(jc.alpha_hat(cc, rr, threshold=0.2)) == pytest.approx(a0, abs=1e-12)
        assert float(jc.trimmed_ks(cc, rr, 0.1)) == pytest.approx(d0, abs=1e-12)
    assert 0.0 <= a0 <= 1.0 and 0.0 <= d0 <= 1.0


def prob_rows(n: int, c: int):
    return st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=n * c, max_size=n * c).map(
        lambda v: (lambda p: p / p.sum(1, keepdims=True))(np.array(v).reshape(n, c) + 1e-3)
    )


@PROPS
@given(prob_rows(9, 3), st.lists(st.integers(0, 2), min_size=9, max_size=9).map(np.array))
def test_ece_is_a_probability_and_matches_binned_oracle(p, y):
    e = float(jc.ece(p, y, n_bins=5))
    assert 0.0 <= e <= 1.0
    conf, pred = p.max(1), p.argmax(1)  # top-label ECE over 5 equal-width bins (Guo et al. 2017), written out
    bins = np.clip(np.ceil(conf * 5).astype(int) - 1, 0, 4)
    want = sum(
        abs(np.mean(pred[bins == b] == y[bins == b]) - conf[bins == b].mean()) * np.mean(bins == b)
        for b in range(5)
        if np.any(bins == b)
    )
    np.testing.assert_allclose(e, want, rtol=1e-9, atol=1e-12)


@PROPS
@given(
    st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=12, max_size=12).map(np.array),
    st.lists(st.integers(0, 1), min_size=12, max_size=12).map(np.array),
)
def test_smooth_ece_is_a_fixed_point_in_unit_interval(f, y):
    """smECE = smECE_σ* at its bandwidth σ*, and σ* = smECE_σ* up to the bisection's resolution 2⁻¹⁰ (unless σ* is at
    the ends of the search, [eps, 1])."""
    s, sigma = (float(v) for v in jc.smooth_ece(f, y, return_sigma=True))
    assert 0.0 <= s <= 1.0
    assert float(jc.smooth_ece_sigma(f, y, sigma)) == pytest.approx(s, rel=1e-9, abs=1e-12)
    if 2e-3 < sigma < 1.0:
        assert abs(s - sigma) <= 2.0**-9, (s, sigma)


@PROPS
@given(grid_vector(10), st.lists(st.booleans(), min_size=10, max_size=10).map(np.array))
def test_auroc_matches_pair_count(scores, positive):
    hypothesis_assume(positive.any() and not positive.all())
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    np.testing.assert_allclose(float(jc.auroc(scores, positive)), wins / (pos.size * neg.size), rtol=1e-12)
