"""Registry entries of the workflow areas: the linear-width simulator (lwr), the embedding microscope (embed), the
built-in data (data) and the report helpers (study)."""

from __future__ import annotations

import jax
import numpy as np

from jaxcompare import data as jcdata
from jaxcompare import embed, lwr

from ._models import _CACHE, IO_ERRORS, KEY, PATH_BAD, STORED, _garbage, key, mlp, tmpdir
from ._spec import CHECKED_BUDGET, HOST, VMAP_BUDGET, WRAPPER, Arg, Case

CFG = lwr.LWRConfig(n=8, d=4, h=6, dtype="float64")
CFG_ARG = Arg("cfg", "other", bad={"type": {"n": 8}})


def _lwr(r):
    return dict(params=lwr.init_params(key(r), CFG), X=r.standard_normal((8, 4)))


def _lwr_run():
    if "run" not in _CACHE:
        data, p = lwr.sample_data(jax.random.key(0), CFG), lwr.init_params(jax.random.key(1), CFG)
        _CACHE["run"] = lwr.train(jax.random.key(2), p, data, CFG, lr=1.0, steps=2, record_every=1, progress_bar=False)
    return _CACHE["run"]


LWR_Z = np.array([1.0 + 0.2j])
L = "jaxcompare.lwr."
TINY_CFG = dict(d_ratio=0.5, h_ratio=0.75)

LWR = (
    Case(
        L + "sample_data",
        lambda r: dict(key=key(r), cfg=CFG),
        args=(KEY, CFG_ARG),
        jit="not documented (vmap over keys is)",
        traced=("key",),
        vmap="documented (vmap over keys); tested in tests/test_lwr.py (compile budget)",
        dtype="the dtype set by cfg.dtype",
    ),
    Case(L + "init_params", lambda r: dict(key=key(r), cfg=CFG), args=(KEY, CFG_ARG), dtype="the dtype of cfg.dtype"),
    Case(
        L + "apply",
        _lwr,
        args=(Arg("params", "tree"), Arg("X", bad={"width": lambda x: x[:, :3]})),
        jit=True,
        dtype="the dtype of params.W",
    ),
    Case(
        L + "kernels",
        _lwr,
        args=(Arg("params", "tree"), Arg("X")),
        jit=True,
        vmap=("X",),
        dtype="the dtype of params.W (documented)",
    ),
    Case(
        L + "train",
        lambda r: dict(key=key(r), lr=1.0),
        call=lambda key, lr: lwr.train(
            key,
            lwr.init_params(jax.random.key(1), CFG),
            lwr.sample_data(jax.random.key(0), CFG),
            CFG,
            lr=lr,
            steps=2,
            record_every=1,
            progress_bar=False,
        ),
        args=(KEY, Arg("lr", "scalar", bad={"range": -1.0})),
        dtype="the dtype of cfg.dtype",
    ),
    Case(
        L + "concat_results",
        lambda r: dict(first=_lwr_run()),
        call=lambda first: lwr.concat_results(first, first),
        args=(Arg("first", "other", label="part 0", bad={"type": 3}),),
        dtype="the dtype of the runs",
    ),
    Case(
        L + "limit_stieltjes",
        lambda r: dict(cfg=CFG, z=LWR_Z),
        args=(CFG_ARG, Arg("z", "other", bad={"nan": np.array([np.nan + 0.2j]), "real": np.array([1.0 + 0j])})),
        jit=HOST,
        dtype="host complex128",
    ),
    Case(
        L + "limit_density",
        lambda r: dict(cfg=CFG, x=np.linspace(0.1, 2.0, 5)),
        args=(CFG_ARG, Arg("x", skip={"rank": "any shape", "empty": "any shape"})),
        jit=HOST,
        dtype="host float64",
    ),
    Case(
        L + "limit_atoms",
        lambda r: dict(cfg=CFG, matrix="weights"),
        args=(CFG_ARG, Arg("matrix", "other", bad={"name": "nope"})),
        call=lambda cfg, matrix: lwr.limit_atoms(cfg, matrix),
    ),
    Case(L + "ntk_w_edge", lambda r: dict(cfg=CFG), args=(CFG_ARG,), dtype="a Python float"),
    Case(
        L + "stable_lr",
        lambda r: dict(cfg=CFG),
        dtype="a Python float",
        args=(
            Arg(
                "cfg",
                "other",
                bad={"type": {"n": 8}},
            ),
        ),
    ),
    Case(
        L + "spike_theta",
        lambda r: dict(params=lwr.init_params(key(r), CFG), data=lwr.sample_data(jax.random.key(0), CFG), lr=8.0),
        call=lambda **kw: lwr.spike_theta(cfg=CFG, **kw),
        args=(Arg("lr", "scalar", bad={"range": -1.0}), Arg("params", "tree")),
        dtype="host float64 numbers (documented)",
    ),
    Case(
        L + "check_early_phase",
        lambda r: dict(key=key(r)),
        call=lambda key: lwr.check_early_phase(key, ns=(8, 16), steps=2, **TINY_CFG),
        args=(KEY,),
        dtype="a theorem check: a host loop over sizes",
        run="valid runs in tests/test_lwr_theorems.py (compile budget)",
    ),
    Case(
        L + "check_bulk_invariance",
        lambda r: dict(key=key(r)),
        call=lambda key: lwr.check_bulk_invariance(key, ns=(8, 16), steps=2, record_every=1, **TINY_CFG),
        args=(KEY,),
        dtype="a theorem check: a host loop over sizes",
        run="valid runs in tests/test_lwr_theorems.py (compile budget)",
    ),
    Case(
        L + "check_spike",
        lambda r: dict(key=key(r), cfg=CFG),
        call=lambda key, cfg: lwr.check_spike(key, cfg, lr_over_n=(4.0,)),
        args=(KEY, CFG_ARG),
        dtype="a theorem check: a host loop over sizes",
        run="valid runs in tests/test_lwr_theorems.py (compile budget)",
    ),
    Case(
        L + "check_adam_tails",
        lambda r: dict(key=key(r), cfg=CFG),
        call=lambda key, cfg: lwr.check_adam_tails(key, cfg, steps=2, batch_size=4, min_tail=2),
        args=(KEY, CFG_ARG),
        dtype="a theorem check: a host loop over sizes",
        run="valid runs in tests/test_lwr_theorems.py (compile budget)",
    ),
    Case(
        L + "check_ntk_closed_form",
        _lwr,
        args=(Arg("params", "tree"), Arg("X")),
        dtype="a record of host numbers",
        run="valid runs in tests/test_lwr.py (compile budget)",
    ),
    Case(
        L + "check_init_spectra",
        lambda r: dict(key=key(r), cfg=CFG),
        args=(KEY, CFG_ARG),
        dtype="a theorem check: a host loop over sizes",
        run="valid runs in tests/test_lwr_theorems.py (compile budget)",
    ),
    Case(
        L + "spectral_diagnosis",
        lambda r: dict(
            eig_init=np.sort(r.uniform(0.1, 2.0, 30)), eig_end=np.sort(r.uniform(0.1, 2.0, 30)), top_align=0.1
        ),
        args=(Arg("eig_init"), Arg("eig_end"), Arg("top_align", "scalar", bad={"range": 1.5})),
        dtype="a verdict and host numbers",
    ),
)

E = "jaxcompare.embed."


def _blobs(r, n=12, d=4):
    y = np.arange(n) % 2
    return r.standard_normal((n, d)) + 2.0 * y[:, None] * np.eye(d)[0], y


def _pca_fit(X):
    t = embed.pca(2)
    return t.apply(t.fit(X), X)


def _lda_fit(X, labels):
    t = embed.lda(n_classes=2)
    return t.apply(t.fit(X, labels), X)


EMBED = (
    Case(
        E + "chain",
        lambda r: dict(X=r.standard_normal((10, 4))),
        call=lambda X: (lambda t: t.apply(t.fit(X), X))(embed.chain(embed.pca(3), embed.pca(2))),
        args=(Arg("X"),),
        dtype=WRAPPER,
    ),
    Case(
        E + "randomized_svd",
        lambda r: dict(key=key(r), A=r.standard_normal((10, 6))),
        call=lambda key, A: embed.randomized_svd(key, A, 2)[1],
        args=(KEY, Arg("A")),
        dtype=WRAPPER,
        rtol=1e-5,
    ),
    Case(
        E + "pca",
        lambda r: dict(X=r.standard_normal((10, 4))),
        call=_pca_fit,
        args=(Arg("X"),),
        jit=True,
        vmap=("X",),
        dtype=True,
        checked=CHECKED_BUDGET,
        rtol=1e-5,
    ),
    Case(
        E + "lda",
        lambda r: dict(zip(("X", "labels"), _blobs(r))),
        call=_lda_fit,
        args=(Arg("X"), Arg("labels", "labels")),
        jit=True,
        dtype=True,
        checked=CHECKED_BUDGET,
        rtol=1e-5,
    ),
    Case(
        E + "separability",
        lambda r: dict(zip(("embeddings", "labels"), _blobs(r))),
        call=lambda **kw: embed.separability(jax.random.key(0), kw["embeddings"], kw["labels"], folds=2),
        args=(Arg("embeddings"), Arg("labels", "labels")),
        dtype="accuracy and its interval as host floats",
        run="valid runs in tests/test_embed_stats.py (compile budget)",
    ),
    Case(
        E + "two_sample_test",
        lambda r: dict(key=key(r), a=r.standard_normal((6, 2)), b=r.standard_normal((7, 2))),
        call=lambda key, a, b: embed.two_sample_test(key, a, b, n_permutations=9),
        args=(KEY, Arg("a"), Arg("b", bad={"width": lambda b: b[:, :1]})),
        jit="documented; jit == eager tested in tests/test_embed_stats.py (compile budget)",
        vmap="documented (vmap over keys); tested in tests/test_embed_stats.py (compile budget)",
        dtype="counts and host metadata",
        checked=CHECKED_BUDGET,
    ),
    Case(
        E + "mmd2",
        lambda r: dict(a=r.standard_normal((6, 2)), b=r.standard_normal((7, 2))),
        args=(Arg("a"), Arg("b")),
        jit=True,
        vmap=VMAP_BUDGET,
        dtype=True,
    ),
    Case(
        E + "extremes",
        lambda r: dict(X=r.standard_normal((10, 4)), direction=r.standard_normal(4)),
        call=lambda **kw: embed.extremes(**kw, k=2),
        args=(Arg("X"), Arg("direction", bad={"length": lambda u: u[:3]})),
        dtype=True,
    ),
    Case(
        E + "save_embeddings",
        lambda r: dict(path=tmpdir("e.npz"), embeddings=r.standard_normal((6, 3)), labels=np.arange(6) % 2),
        args=(Arg("embeddings"), Arg("labels", "labels")),
    ),
    Case(
        E + "load_embeddings",
        lambda r: dict(path=_saved_embeddings()),
        args=(Arg("path", "other", bad={**PATH_BAD, "garbage": lambda p: _garbage(".npz")}),),
        errors=IO_ERRORS,
        dtype=STORED,
    ),
    Case(
        E + "make_demo_embeddings",
        lambda r: dict(key=key(r)),
        call=lambda key: embed.make_demo_embeddings(key, n_per_source=6, dim=4),
        args=(KEY,),
        dtype="float32 by design (documented)",
        run="valid runs in tests/test_embed_io.py (compile budget)",
    ),
    Case(
        E + "microscope_report",
        lambda r: dict(zip(("X", "labels"), _blobs(r))),
        call=lambda X, labels: embed.microscope_report(X, labels, key=jax.random.key(0), n_permutations=9, k=2),
        args=(Arg("X"), Arg("labels", "labels")),
        run="valid runs in tests/test_embed_io.py (compile budget)",
    ),
)


def _saved_embeddings():
    if "emb" not in _CACHE:
        path = tmpdir("emb.npz")
        embed.save_embeddings(path, np.random.default_rng(0).standard_normal((6, 3)), np.arange(6) % 2)
        _CACHE["emb"] = path
    return _CACHE["emb"]


D = "jaxcompare.data."

DATA = (
    Case(
        D + "digits_task",
        lambda r: dict(kind="binary"),
        call=lambda kind: jcdata.digits_task(kind)[0].shape,
        args=(Arg("kind", "other", bad={"name": "nope"}),),
    ),
    Case(
        D + "make_mlp",
        lambda r: dict(n_classes=3),
        call=lambda n_classes: jcdata.make_mlp(n_classes, width=4),
        args=(Arg("n_classes", "other", bad={"range": 0, "dtype": 2.5}),),
    ),
    Case(
        D + "mlp_feature_fns",
        lambda r: dict(module=jcdata.make_mlp(2, width=4)),
        call=lambda module: len(jcdata.mlp_feature_fns(module)),
        args=(Arg("module", "other", bad={"type": lambda m: mlp}),),
    ),
    Case(
        D + "train_ensemble",
        lambda r: dict(key=key(r), x=r.standard_normal((8, 3)), y=np.arange(8) % 2),
        call=lambda key, x, y: jcdata.train_ensemble(
            key, jcdata.make_mlp(2, width=4, depth=1), x, y, 2, [jcdata.Recipe("a", steps=2, batch_size=4)]
        ),
        args=(KEY, Arg("x", skip={"rank": "x is whatever the module takes"}), Arg("y", "labels")),
        dtype="float32 flax parameters",
        run="valid runs in tests/test_study.py, tests/test_mnist1d.py (compile budget)",
    ),
)

DATA = DATA + (
    Case(
        D + "mnist1d_task",
        lambda r: dict(num_samples=20, train_split=0.5),
        call=lambda **kw: jcdata.mnist1d_task(**kw)[0].shape,
        args=(
            Arg("num_samples", "other", bad={"range": 15, "small": 10}),
            Arg("train_split", "scalar", bad={"range": 1.5}),
        ),
    ),
    Case(
        D + "make_mnist1d_model",
        lambda r: dict(arch="cnn", n_classes=3),
        call=lambda **kw: type(jcdata.make_mnist1d_model(**kw)).__name__,
        args=(Arg("arch", "other", bad={"name": "transformer"}), Arg("n_classes", "other", bad={"range": 1})),
    ),
)

STUDY_CLI = (
    # any value is valid: objects it does not know become their repr (NaN/inf become null, by design)
    Case("jaxcompare.study.to_jsonable", lambda r: dict(x={"a": np.array([1.0, np.nan])})),
    Case("jaxcompare.study.render_text", lambda r: dict(s="a `b` <c>")),
)


CASES = LWR + EMBED + DATA + STUDY_CLI
