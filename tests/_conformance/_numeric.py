"""Registry entries of the numerical kernels: trimming, metrics, similarity and spectra."""

from __future__ import annotations

import jax
import numpy as np

import jaxcompare as jc
from jaxcompare import spectra

from ._spec import CHECKED_BUDGET, HOST, NOT_ARRAY, VMAP_BUDGET, WRAPPER, Arg, Case, spoil

J = "jaxcompare."
S = "jaxcompare.spectra."
ANY_SHAPE = "any shape is valid"
SCALAR_OK = "a scalar is valid (documented: any shape)"


def key(rng):
    return jax.random.key(int(rng.integers(1 << 30)))


def probs(rng, n, c):
    p = rng.uniform(0.05, 1.0, (n, c))
    return p / p.sum(1, keepdims=True)


def labels(rng, n, c):
    y = np.arange(n) % c
    return rng.permutation(y)


def psd(rng, n, d=3):
    f = rng.standard_normal((n, d))
    return f @ f.T


KEY = Arg("key", "key")
TH = {"range": 1.5}  # a KS threshold outside (0, 1]

TRIMMING = (
    Case(
        J + "alpha_hat",
        lambda r: dict(candidate=r.standard_normal(12) + 0.5, reference=r.standard_normal(15), threshold=0.3),
        args=(Arg("candidate"), Arg("reference"), Arg("threshold", "scalar", bad=TH)),
        jit=True,
        vmap=("candidate",),
        dtype=True,
        checked=True,
    ),
    Case(
        J + "trimmed_ks",
        lambda r: dict(candidate=r.standard_normal(12) + 0.5, reference=r.standard_normal(15), alpha=0.1),
        args=(Arg("candidate"), Arg("reference"), Arg("alpha", "scalar", bad={"range": 1.5})),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        checked=CHECKED_BUDGET,
    ),
    Case(
        J + "w1_excess",
        lambda r: dict(candidate=r.standard_normal(12) + 0.5, reference=r.standard_normal(15), threshold=0.1),
        args=(Arg("candidate"), Arg("reference"), Arg("threshold", "scalar", bad={"range": -0.1})),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        checked=CHECKED_BUDGET,
    ),
    Case(
        J + "ks_threshold",
        lambda r: dict(n=10, m=12, level=0.01),
        args=(Arg("n", "other", bad={"range": 0, "dtype": 2.5}), Arg("level", "scalar", bad={"range": 1.5})),
        jit="a Python float from static sizes (usable inside jit as a constant)",
        dtype=NOT_ARRAY,
    ),
    Case(
        J + "grid_alpha",
        lambda r: dict(alpha=r.uniform(0, 1, 5)),
        args=(
            Arg(
                "alpha",
                bad={"range": np.array([0.2, 1.5]), "negative": np.array([-0.1])},
                skip={"rank": ANY_SHAPE, "empty": ANY_SHAPE},
            ),
        ),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
    ),
    Case(
        J + "recipe_alpha",
        lambda r: dict(candidate=r.standard_normal(12), pool=r.standard_normal((3, 10)), threshold=0.3),
        args=(Arg("candidate"), Arg("pool"), Arg("threshold", "scalar", bad=TH)),
        dtype=WRAPPER,
    ),
    Case(
        J + "pool_threshold",
        lambda r: dict(pool=r.standard_normal((3, 10))),
        args=(Arg("pool", bad={"one_model": lambda p: p[:1]}),),
        dtype=WRAPPER,
    ),
    Case(
        J + "identify_recipe",
        lambda r: dict(
            candidate=r.standard_normal(12),
            pools={"a": r.standard_normal((3, 10)), "b": 2 + r.standard_normal((3, 10))},
            threshold=0.3,
        ),
        args=(
            Arg("candidate"),
            Arg(
                "pools",
                "other",
                bad={
                    "nan": lambda p: {k: spoil(v, np.nan) for k, v in p.items()},
                    "empty": {},
                },
            ),
        ),
        dtype="a record of Python values",
    ),
    Case(
        J + "evaluate_identification",
        lambda r: dict(
            candidates={"a": r.standard_normal((2, 10)), "b": 2 + r.standard_normal((2, 10))},
            pools={"a": r.standard_normal((3, 10)), "b": 2 + r.standard_normal((3, 10))},
            threshold=0.3,
        ),
        args=(
            Arg("candidates", "other", bad={"unknown": lambda c: {"zz": c["a"]}}),
            Arg("pools", "other", bad={"empty": {}}),
        ),
        dtype="a record of Python values",
        run="valid runs in tests/test_recipes.py (compile budget)",
    ),
    Case(
        J + "ensemble_alpha_hat",
        lambda r: dict(
            key=key(r), scores=r.standard_normal((4, 16)), candidates=np.array([0, 1]), reference=np.array([2, 3])
        ),
        call=lambda key, scores, **kw: jc.ensemble_alpha_hat(key, scores, n_boot=2, threshold=0.3, **kw),
        args=(
            KEY,
            Arg("scores"),
            Arg("candidates", "other", bad={"range": np.array([0, 9]), "dtype": np.array([0.5, 1.0])}),
        ),
        dtype=WRAPPER,
        run="valid runs in tests/test_trimming_protocol.py (compile budget)",
    ),
    Case(
        J + "bootstrap_halves",
        lambda r: dict(key=key(r), n_test=10, sample_size=4),
        args=(KEY, Arg("sample_size", "other", bad={"range": 0})),
        dtype="returns integer indices",
    ),
    Case(
        J + "select_members",
        lambda r: dict(key=key(r), scores=r.standard_normal((4, 16))),
        call=lambda key, scores: jc.select_members(key, scores, k=2, n_boot=2, threshold=0.3),
        args=(KEY, Arg("scores")),
        dtype="host-side arrays of α̂ (documented)",
        run="valid runs in tests/test_recipes.py (compile budget)",
    ),
)

METRICS = (
    Case(
        J + "auroc",
        lambda r: dict(scores=r.standard_normal(10), positive=np.arange(10) % 2 == 0),
        args=(Arg("scores"), Arg("positive", "mask", bad={"one_class": np.zeros(10, bool)})),
        jit=True,
        vmap=("scores",),
        dtype=True,
    ),
    Case(
        J + "logit_scores",
        lambda r: dict(logits=r.standard_normal((6, 3)), labels=labels(r, 6, 3)),
        args=(
            Arg("logits", bad={"rank": lambda x: x[0, 0]}, skip={"rank": "(..., T, C): leading batch axes"}),
            Arg("labels", "labels", bad={"too_big": np.full(6, 3)}),
        ),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
    ),
    Case(
        J + "accuracy",
        lambda r: dict(pred=r.standard_normal((8, 3)), labels=labels(r, 8, 3)),
        args=(Arg("pred"), Arg("labels", "labels", bad={"too_big": np.full(8, 3)})),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        checked=True,
    ),
    Case(
        J + "churn",
        lambda r: dict(a=r.standard_normal((8, 3)), b=r.standard_normal((8, 3))),
        args=(Arg("a"), Arg("b", bad={"classes": lambda b: b[:, :2]})),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        checked=CHECKED_BUDGET,
    ),
    Case(
        J + "pairwise_churn",
        lambda r: dict(preds=r.standard_normal((3, 8, 2))),
        args=(Arg("preds"),),
        dtype=WRAPPER,
    ),
    Case(
        J + "ece",
        lambda r: dict(probs=probs(r, 10, 3), labels=labels(r, 10, 3)),
        args=(Arg("probs", "prob"), Arg("labels", "labels", bad={"too_big": np.full(10, 3)})),
        dtype=True,
    ),
    Case(
        J + "reliability_bins",
        lambda r: dict(probs=probs(r, 10, 3), labels=labels(r, 10, 3)),
        call=lambda **kw: jc.reliability_bins(**kw, n_bins=4),
        args=(Arg("probs", "prob"), Arg("labels", "labels")),
        dtype=WRAPPER,
    ),
    Case(
        J + "smooth_ece",
        lambda r: dict(probs=r.uniform(0.05, 0.95, 12), labels=np.arange(12) % 2),
        args=(Arg("probs", "prob"), Arg("labels", "labels", bad={"too_big": np.full(12, 2)})),
        jit=True,
        vmap="documented; tested in tests/test_calibration.py (compile budget)",
        dtype=True,
    ),
    Case(
        J + "smooth_ece_sigma",
        lambda r: dict(probs=r.uniform(0.05, 0.95, 12), labels=np.arange(12) % 2, sigma=0.1),
        args=(Arg("probs", "prob"), Arg("labels", "labels"), Arg("sigma", "scalar", bad={"range": 2.0})),
        dtype=WRAPPER,
    ),
    Case(
        J + "ece_interval",
        lambda r: dict(key=key(r), probs=probs(r, 10, 3), labels=labels(r, 10, 3)),
        call=lambda key, probs, labels: jc.ece_interval(key, probs, labels, n_boot=4, n_bins=4),
        args=(KEY, Arg("probs", "prob"), Arg("labels", "labels")),
        dtype=WRAPPER,
        run="valid runs in tests/test_calibration.py (compile budget)",
    ),
    Case(
        J + "smooth_ece_interval",
        lambda r: dict(key=key(r), probs=r.uniform(0.05, 0.95, 12), labels=np.arange(12) % 2),
        call=lambda key, probs, labels: jc.smooth_ece_interval(key, probs, labels, n_boot=2, batch_size=2),
        args=(KEY, Arg("probs", "prob"), Arg("labels", "labels")),
        dtype=WRAPPER,
        run="valid runs in tests/test_calibration.py (compile budget)",
    ),
    Case(
        J + "smooth_reliability",
        lambda r: dict(probs=r.uniform(0.05, 0.95, 12), labels=np.arange(12) % 2),
        call=lambda **kw: jc.smooth_reliability(**kw, n_points=5),
        args=(Arg("probs", "prob"), Arg("labels", "labels")),
        dtype=WRAPPER,
    ),
    Case(
        J + "kendall_tau",
        lambda r: dict(x=r.standard_normal(9), y=r.standard_normal(9)),
        args=(Arg("x"), Arg("y", bad={"length": lambda y: y[:-1]})),
        jit=True,
        vmap=("x", "y"),
        dtype=True,
    ),
    Case(
        J + "kendall_tau_test",
        lambda r: dict(x=r.standard_normal(9), y=r.standard_normal(9)),
        args=(Arg("x"), Arg("y")),
        dtype=WRAPPER,
    ),
    Case(
        J + "binary_probs",
        lambda r: dict(gap=r.standard_normal(6)),
        args=(Arg("gap", skip={"rank": "(..., n): leading batch axes", "empty": ANY_SHAPE}),),
        jit=True,
        dtype=True,
    ),
    Case(
        J + "ensemble_label",
        lambda r: dict(scores=r.standard_normal((3, 6))),
        args=(Arg("scores", bad={"rank": lambda s: s[..., None, None]}),),
        checked=CHECKED_BUDGET,
        dtype="returns integer labels",
    ),
    Case(
        J + "hard_labels",
        lambda r: dict(pred=r.standard_normal((6, 3))),
        args=(Arg("pred", bad={"rank": lambda p: p[..., None]}),),
        checked=CHECKED_BUDGET,
        dtype="returns integer labels",
    ),
)

SIMILARITY = (
    Case(
        J + "cka",
        lambda r: dict(K1=psd(r, 6), K2=psd(r, 6)),
        args=(Arg("K1"), Arg("K2", bad={"shape": lambda k: k[:5, :5]})),
        jit=True,
        vmap=("K1",),
        dtype=True,
        checked="documented: under jit only shapes are checked (such kernels give NaN)",
    ),
    Case(
        J + "linear_cka",
        lambda r: dict(X=r.standard_normal((8, 3)), Y=r.standard_normal((8, 4))),
        args=(Arg("X"), Arg("Y", bad={"length": lambda y: y[:7]})),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        checked="documented: under jit only shapes are checked",
    ),
    Case(
        J + "cka_test",
        lambda r: dict(key=key(r), K1=psd(r, 6), K2=psd(r, 6)),
        call=lambda key, K1, K2: jc.cka_test(key, K1, K2, n_permutations=9),
        args=(KEY, Arg("K1"), Arg("K2")),
        jit="documented; tested in tests/test_similarity.py (compile budget)",
        vmap="documented (vmap over keys); tested in tests/test_similarity.py (compile budget)",
        dtype=WRAPPER,
        checked="documented: under jit only shapes are checked",
        run="valid runs in tests/test_similarity.py (compile budget)",
    ),
)


def _powerlaw(r, n=60):
    return (1.0 - r.uniform(0, 1, n)) ** (-1 / 1.5)  # Pareto, density ∝ x^-2.5 on [1, ∞)


Z = np.array([1.0 + 0.2j, 2.0 + 0.3j])
Z_BAD = {"nan": np.array([np.nan + 0.2j]), "real": np.array([1.0 + 0j]), "lower": np.array([1.0 - 0.2j])}
RATIO = Arg("ratio", "scalar", bad={"range": -0.5})
HOST_JIT = HOST

SPECTRA = (
    Case(
        S + "gaussian_constants",
        lambda r: dict(activation="tanh", order=61),
        args=(
            Arg("order", "other", bad={"range": 0, "dtype": 2.5, "huge": 372}),
            Arg("activation", "other", bad={"name": "nope"}),
        ),
        dtype="Python floats (static constants)",
    ),
    Case(S + "mp_support", lambda r: dict(ratio=0.5), args=(RATIO,), dtype="Python floats"),
    Case(S + "mp_atom", lambda r: dict(ratio=0.5), args=(RATIO,), dtype="a Python float"),
    Case(
        S + "mp_median",
        lambda r: dict(ratio=0.5),
        args=(Arg("ratio", "scalar", bad={"range": 1.5}),),
        dtype="a Python float",
    ),
    Case(S + "bbp_threshold", lambda r: dict(ratio=0.5), args=(RATIO,), dtype="a Python float"),
    Case(
        S + "mp_density",
        lambda r: dict(x=np.linspace(0.1, 2.5, 7), ratio=0.5),
        args=(Arg("x", skip={"rank": ANY_SHAPE, "empty": ANY_SHAPE}), RATIO),
        jit=HOST,
        dtype="host float64 (documented)",
    ),
    Case(
        S + "mp_stieltjes",
        lambda r: dict(z=Z, ratio=0.5),
        args=(Arg("z", "other", bad=Z_BAD), RATIO),
        jit=HOST,
        dtype="host complex128 (documented)",
    ),
    Case(
        S + "empirical_stieltjes",
        lambda r: dict(eigenvalues=r.uniform(0.1, 3.0, 8), z=Z),
        args=(Arg("eigenvalues", skip={"rank": "(..., n): leading batch axes"}), Arg("z", "other", bad=Z_BAD)),
        jit=True,
        traced=("eigenvalues",),
        vmap=VMAP_BUDGET,
        dtype="complex output (the complex dtype of the inputs' precision)",
    ),
    Case(
        S + "stieltjes_distance",
        lambda r: dict(eigenvalues=r.uniform(0.1, 3.0, 8), z=Z),
        call=lambda eigenvalues, z: spectra.stieltjes_distance(eigenvalues, spectra.mp_stieltjes(z, 0.5), z),
        args=(Arg("eigenvalues", skip={"rank": "(..., n): leading batch axes"}), Arg("z", "other", bad=Z_BAD)),
        jit=HOST,
        dtype="host float64 (documented)",
    ),
    Case(
        S + "fan_wang_stieltjes",
        lambda r: dict(z=Z),
        call=lambda z: spectra.fan_wang_stieltjes(z, gamma0=2.0, gamma1=4 / 3, t0=0.027, t1=0.367),
        args=(Arg("z", "other", bad=Z_BAD),),
        jit=HOST,
        dtype="host complex128 (documented)",
    ),
    Case(
        S + "fan_wang_density",
        lambda r: dict(x=np.linspace(0.5, 3.0, 4)),
        call=lambda x: spectra.fan_wang_density(x, gamma0=2.0, gamma1=4 / 3, t0=0.027, t1=0.367),
        args=(Arg("x", skip={"rank": ANY_SHAPE, "empty": ANY_SHAPE}),),
        jit=HOST,
        dtype="host float64 (documented)",
    ),
    Case(
        S + "bbp_outlier",
        lambda r: dict(theta=np.array([0.5, 2.0]), ratio=0.5),
        args=(Arg("theta", skip={"rank": ANY_SHAPE, "empty": ANY_SHAPE}), RATIO),
        jit=HOST,
        dtype="host float64",
    ),
    Case(
        S + "bbp_alignment",
        lambda r: dict(theta=np.array([0.5, 2.0]), ratio=0.5),
        args=(Arg("theta", skip={"rank": ANY_SHAPE, "empty": ANY_SHAPE}), RATIO),
        jit=HOST,
        dtype="host float64",
    ),
    Case(
        S + "powerlaw_fit",
        lambda r: dict(x=_powerlaw(r)),
        call=lambda x: spectra.powerlaw_fit(x, min_tail=5),
        args=(Arg("x", bad={"constant": np.ones(60), "negative": -np.ones(60)}),),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
        rtol=1e-5,
    ),
    Case(
        S + "powerlaw_gof",
        lambda r: dict(key=key(r), x=_powerlaw(r)),
        call=lambda key, x: spectra.powerlaw_gof(key, x, n_boot=3, min_tail=5, max_candidates=20),
        args=(KEY, Arg("x")),
        dtype=WRAPPER,
        run="valid runs in tests/test_spectra.py (compile budget)",
    ),
    Case(
        S + "mp_bulk_fit",
        lambda r: dict(eigenvalues=np.linalg.svd(r.standard_normal((40, 10)), compute_uv=False) ** 2 / 40),
        call=lambda eigenvalues: spectra.mp_bulk_fit(eigenvalues, 40, 10),
        args=(Arg("eigenvalues", bad={"negative": -np.ones(10)}),),
        dtype="host float64 fit (documented)",
    ),
    Case(
        S + "analyze_params",
        lambda r: dict(params={"w": r.standard_normal((30, 12)), "b": np.zeros(12)}),
        call=lambda params: spectra.analyze_params(params, min_tail=5, max_candidates=20),
        args=(Arg("params", "tree"),),
        dtype="host report (Python floats)",
    ),
    Case(
        S + "report_rows",
        lambda r: dict(result=_layer_spectra()),
        args=(Arg("result", "other", bad={"type": "not a result"}),),
    ),
    Case(
        S + "format_report",
        lambda r: dict(result=_layer_spectra()),
        args=(Arg("result", "other", bad={"type": 3}),),
    ),
)


SPECTRA = SPECTRA + (
    Case(
        S + "layer_groups",
        lambda r: dict(result=_layer_spectra(), max_panels=12),
        args=(Arg("result", "other", bad={"type": "not a result"}), Arg("max_panels", "other", bad={"range": 0})),
        call=lambda result, max_panels: spectra.layer_groups(result, max_panels=max_panels),
    ),
    Case(
        S + "group_file_name",
        lambda r: dict(label="MLP"),
        args=(
            Arg(
                "label",
                "other",
                bad={"type": 3},
            ),
        ),
    ),
)

_CACHE: dict = {}


def _layer_spectra():
    if "ls" not in _CACHE:
        w = np.random.default_rng(0).standard_normal((30, 12))
        _CACHE["ls"] = spectra.analyze_params({"w": w}, min_tail=5, max_candidates=20)
    return _CACHE["ls"]


CASES = TRIMMING + METRICS + SIMILARITY + SPECTRA
