"""Registry entries of the model-facing areas: kernels (ntk), surrogates, kernel similarity, compare, checked mode."""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

import jaxcompare as jc

from ._spec import CHECKED_BUDGET, WRAPPER, Arg, Case

J = "jaxcompare."
ANY_X = "x is whatever apply_fn takes (any rank, pytrees)"
FLAX = "the dtype of the flax variables (a closure, not an argument)"
STORED = "the dtype stored in the file"
KEY = Arg("key", "key")


def key(rng):
    return jax.random.key(int(rng.integers(1 << 30)))


def mlp(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def features(params, x):
    return jnp.tanh(x @ params["w1"])


def layers(params, x):
    return [features(params, x), mlp(params, x)]


def net(rng, n=5):
    return dict(
        params={"w1": rng.standard_normal((3, 4)), "w2": rng.standard_normal((4, 2))}, x1=rng.standard_normal((n, 3))
    )


_ROOT = tempfile.TemporaryDirectory(prefix="jc-conformance-")  # removed when the test process exits


def _tmp_root() -> str:
    return tempfile.mkdtemp(dir=_ROOT.name)


def tmpdir(name: str) -> str:
    return os.path.join(_tmp_root(), name)


def _kernel_store() -> str:
    """A finished kernel_to_disk store (made once)."""
    if "kernel" not in _CACHE:
        _CACHE["kernel"] = tmpdir("store")
        jc.kernel_to_disk(
            jc.trace_ntk(mlp), **net(np.random.default_rng(0)), path=_CACHE["kernel"], block_size=2, progress_bar=False
        )
    return _CACHE["kernel"]


PARAMS = Arg("params", "tree")
X1 = Arg("x1", skip={"rank": ANY_X})
INT_PARAMS = {"int": lambda p: jax.tree_util.tree_map(lambda w: np.asarray(w * 3, np.int32), p)}


PARAMS_NO_GRAD = Arg("params", "tree")  # features only, no gradients: integer parameters are valid


NTK_DTYPE = "kept: tests/test_ntk.py::test_float32_kept_and_close_to_float64, every implementation (compile budget)"
NTK_PARAMS = Arg("params", "tree", bad=INT_PARAMS)  # integer parameters have no gradient: must be refused


def kernel_case(name, factory, params=NTK_PARAMS, dtype=True, **kw):
    return Case(
        J + name,
        net,
        call=lambda params, x1: factory()(params, x1),
        args=(params, X1),
        jit=True,
        dtype=dtype,
        **kw,
    )


NTK = (
    kernel_case("empirical_ntk", lambda: jc.empirical_ntk(mlp), dtype=NTK_DTYPE),
    kernel_case("trace_ntk", lambda: jc.trace_ntk(mlp)),
    kernel_case("pseudo_ntk", lambda: jc.pseudo_ntk(mlp), dtype=NTK_DTYPE),
    kernel_case("conjugate_kernel", lambda: jc.conjugate_kernel(features), params=PARAMS_NO_GRAD),
    kernel_case("embedding_kernel", lambda: jc.embedding_kernel(layers), params=PARAMS_NO_GRAD),
    Case(
        J + "batched",
        net,
        call=lambda params, x1: jc.batched(jc.trace_ntk(mlp), block_size=2, progress_bar=False)(params, x1),
        args=(Arg("params", "tree", bad=INT_PARAMS), X1),
        dtype=WRAPPER,
    ),
    Case(
        J + "sharded",
        net,
        call=lambda params, x1: jc.sharded(jc.trace_ntk(mlp), pad=True)(params, x1),
        args=(Arg("params", "tree", bad=INT_PARAMS), X1),
        dtype=WRAPPER,
    ),
    Case(
        J + "kernel_to_disk",
        lambda r: {**net(r), "path": tmpdir("k")},
        call=lambda params, x1, path: np.asarray(
            jc.kernel_to_disk(
                jc.trace_ntk(mlp), params, x1, path=path, block_size=2, progress_bar=False, overwrite=True
            )
        ),
        args=(Arg("params", "tree", bad=INT_PARAMS), X1),
        dtype=WRAPPER,
    ),
    Case(
        J + "load_kernel",
        lambda r: dict(path=_kernel_store()),
        args=(
            Arg(
                "path",
                "other",
                bad={"missing": lambda p: p + "-missing", "file": lambda p: _garbage(".json"), "empty": ""},
            ),
        ),
        errors=(FileNotFoundError, OSError),
        dtype=STORED,
    ),
    Case(
        J + "gather",
        lambda r: dict(K=jnp.asarray(r.standard_normal((4, 4)))),
        args=(Arg("K", "other", bad={"type": "not an array"}),),
        dtype=True,
    ),
    Case(
        J + "save_rows",
        lambda r: dict(K=jnp.asarray(r.standard_normal((4, 4))), path=tmpdir("K.npy"), rows=3),
        call=lambda K, path, rows: np.asarray(jc.save_rows(K, path, rows=rows)),
        args=(Arg("K", "other", bad={"type": "not an array"}), Arg("rows", "other", bad={"range": 9})),
        dtype=True,
    ),
    Case(
        J + "random_projection",
        lambda r: dict(key=key(r), dim=8),
        args=(KEY, Arg("dim", "other", bad={"range": 0, "dtype": 2.5})),
        dtype="a lazily generated projection record",
    ),
    Case(
        J + "kronecker_projection",
        lambda r: dict(key=key(r), dim_in=4, dim_out=4),
        args=(KEY, Arg("dim_in", "other", bad={"range": 0})),
        dtype="a lazily generated projection record",
    ),
    Case(
        J + "structured_projection",
        lambda r: dict(key=key(r), dim=8),
        args=(KEY, Arg("dim", "other", bad={"range": -1})),
        dtype="a lazily generated projection record",
    ),
    Case(
        J + "project_gradients",
        lambda r: {**net(r), "projection": jc.structured_projection(jax.random.key(1), 8)},
        call=lambda params, x1, projection: jc.project_gradients(mlp, params, x1, projection),
        args=(PARAMS, X1, Arg("projection", "other", bad={"type": "rademacher"})),
        dtype=WRAPPER,
        run="valid runs in tests/test_ntk_features.py (compile budget)",
    ),
    Case(
        J + "projected_kernel",
        lambda r: dict(features1=r.standard_normal((4, 2, 8))),
        args=(Arg("features1"),),
        dtype=True,
    ),
    Case(
        J + "kernel",
        lambda r: {**net(r), "name": "trntk0"},
        call=lambda name, params, x1: jc.kernel(name, mlp)(params, x1),
        args=(Arg("name", "other", bad={"unknown": "nope"}), PARAMS),
        dtype=WRAPPER,
    ),
    Case(
        J + "kernel_label",
        lambda r: dict(name="trntk0"),
        args=(Arg("name", "other", bad={"unknown": "nope", "type": 3}),),
    ),
    Case(
        J + "explain",
        net,
        call=lambda params, x1: str(jc.explain(mlp, params, x1)),
        args=(PARAMS,),
    ),
    Case(
        J + "from_linen",
        lambda r: dict(module=_linen()[0], variables=_linen()[1]),
        call=lambda module, variables: jc.from_linen(module, variables)[0](_linen()[1]["params"], jnp.ones((2, 3))),
        args=(Arg("module", "other", bad={"type": lambda m: mlp}), Arg("variables", "other", bad={"missing": {}})),
        dtype=FLAX,
    ),
    Case(
        J + "linen_layers_fn",
        lambda r: dict(module=_linen()[0], variables=_linen()[1]),
        call=lambda module, variables: jc.linen_layers_fn(module, variables)(_linen()[1]["params"], jnp.ones((2, 3))),
        dtype=FLAX,
        args=(
            Arg(
                "module",
                "other",
                bad={"type": lambda m: mlp},
            ),
        ),
    ),
    Case(
        J + "from_nnx",
        lambda r: dict(module=_nnx()),
        call=lambda module: jc.from_nnx(module)[0](jc.from_nnx(module)[1], jnp.ones((2, 3))),
        args=(Arg("module", "other", bad={"type": lambda m: mlp}),),
        dtype="flax.nnx keeps its own float32 parameters",
    ),
    Case(
        J + "from_stax",
        lambda r: dict(apply_fn=lambda params, inputs: inputs @ params[0]),
        call=lambda apply_fn: jc.from_stax(apply_fn)((np.ones((3, 2)),), np.ones((4, 3))),
        args=(Arg("apply_fn", "other", bad={"type": "not callable"}),),
        dtype="the dtype of the stax parameters (a closure, not an argument)",
    ),
)

_CACHE: dict = {}


def _linen():
    if "linen" not in _CACHE:
        import flax.linen as nn

        model = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(2)])
        _CACHE["linen"] = model, model.init(jax.random.key(0), jnp.ones((1, 3)))
    return _CACHE["linen"]


def _nnx():
    from flax import nnx

    return nnx.Linear(3, 2, rngs=nnx.Rngs(0))


def _kglm():
    if "kglm" not in _CACHE:
        r = np.random.default_rng(5)
        K = r.standard_normal((8, 3))
        _CACHE["kglm"] = jc.fit_kglm(K[:6] @ K[:6].T, np.arange(6) % 2, n_classes=2), K[6:] @ K[:6].T
    return _CACHE["kglm"]


MODEL = Arg("model", "other", bad={"type": "not a KGLM"})
KTT = Arg("kernel_test_train", bad={"columns": lambda k: k[:, :5]})

SURROGATE = (
    Case(
        J + "fit_kglm",
        lambda r: dict(
            kernel_train_train=(lambda f: f @ f.T)(r.standard_normal((6, 3))),
            labels=np.arange(6) % 2,
            l2=float(10.0 ** -r.integers(2, 4)),
        ),
        call=lambda **kw: jc.fit_kglm(**kw, n_classes=2),
        args=(
            Arg("kernel_train_train"),
            Arg("labels", "labels", bad={"too_big": np.array([0, 1, 2, 0, 1, 0]), "length": lambda y: y[:5]}),
            Arg("l2", "scalar", bad={"range": -1.0}),
        ),
        jit=True,
        vmap=("l2",),
        dtype=True,
        checked=True,
        rtol=1e-5,
    ),
    Case(
        J + "kglm_logits",
        lambda r: dict(model=_kglm()[0], kernel_test_train=_kglm()[1]),
        args=(MODEL, KTT),
        traced=("kernel_test_train",),
        jit=True,
        dtype="the kGLM's own dtype",
        checked=CHECKED_BUDGET,
    ),
    Case(
        J + "kglm_proba",
        lambda r: dict(model=_kglm()[0], kernel_test_train=_kglm()[1]),
        args=(MODEL, KTT),
        dtype="the kGLM's own dtype",
    ),
    Case(
        J + "attribute",
        lambda r: dict(model=_kglm()[0], kernel_test_train=_kglm()[1]),
        call=lambda **kw: jc.attribute(**kw, k=2),
        args=(MODEL, KTT),
        dtype="the kGLM's own dtype",
    ),
    Case(
        J + "contributions",
        lambda r: dict(model=_kglm()[0], kernel_test_train=_kglm()[1]),
        args=(MODEL, KTT),
        dtype="the kGLM's own dtype",
    ),
    Case(
        J + "faithfulness",
        lambda r: dict(
            network_logits=r.standard_normal((8, 3)),
            surrogate_logits=r.standard_normal((8, 3)),
            labels=np.arange(8) % 3,
        ),
        args=(
            Arg("network_logits"),
            Arg("surrogate_logits", bad={"classes": lambda s: s[:, :2]}),
            Arg("labels", "labels", bad={"too_big": np.full(8, 3)}),
        ),
        jit=True,
        dtype=True,
        checked=True,
    ),
    Case(
        J + "surrogate_table",
        lambda r: dict(
            key=key(r),
            params=net(r)["params"],
            x_train=r.standard_normal((6, 3)),
            y_train=np.arange(6) % 2,
            x_test=r.standard_normal((4, 3)),
            y_test=np.arange(4) % 2,
        ),
        call=lambda key, params, x_train, y_train, x_test, y_test: jc.surrogate_table(
            key, mlp, params, x_train, y_train, x_test, y_test, kernels=("trntk0",), progress_bar=False
        ),
        args=(
            Arg(
                "key",
                "key",
            ),
            PARAMS,
            Arg(
                "x_train",
                skip={"rank": ANY_X},
            ),
            Arg("y_train", "labels"),
        ),
        dtype="a table of Python floats",
        run="valid runs in tests/test_surrogate_digits.py (compile budget)",
    ),
)


def _compare_fn(p, x):
    return jnp.stack([-x @ p["w"], x @ p["w"]], axis=1)


def _compare_example(r):
    x = r.standard_normal((12, 3))
    return dict(
        key=key(r),
        params_list=[{"w": r.standard_normal(3)} for _ in range(3)],
        x_test=x,
        y_test=(x[:, 0] > 0).astype(np.int32),
    )


def _saved(kind: str) -> str:
    if kind not in _CACHE:
        d = _tmp_root()
        if kind == "comparison":
            ex = _compare_example(np.random.default_rng(0))
            res = jc.compare_models(ex.pop("key"), _compare_fn, **ex, sections=(), progress_bar=False)
            _CACHE[kind] = res.save(os.path.join(d, "cmp"))
        else:
            for i in range(2):
                jc.save_params({"w": np.full((2, 2), float(i))}, os.path.join(d, f"seed{i}.npz"))
            _CACHE[kind] = d
    return _CACHE[kind]


def _garbage(suffix: str) -> str:
    path = tmpdir("garbage" + suffix)
    with open(path, "wb") as f:
        f.write(b"\x00not a file of this kind\xff" * 3)
    return path


PATH_BAD = {"missing": lambda p: os.path.join(os.path.dirname(p), "no-such-file.npz")}
IO_ERRORS = (FileNotFoundError, OSError)

COMPARE = (
    Case(
        J + "compare_models",
        _compare_example,
        call=lambda key, params_list, x_test, y_test: jc.compare_models(
            key, _compare_fn, params_list, x_test, y_test, sections=(), progress_bar=False
        ),
        args=(
            KEY,
            Arg("params_list", "other", label="model 0", bad={"nan": lambda ps: [{"w": p["w"] * np.nan} for p in ps]}),
            Arg("y_test", "labels"),
        ),
        dtype="a record of Python values",
    ),
    Case(
        J + "load_comparison",
        lambda r: dict(directory=_saved("comparison")),
        args=(
            Arg("directory", "other", bad={"missing": lambda p: p + "-missing", "file": lambda p: _garbage(".json")}),
        ),
        errors=IO_ERRORS,
    ),
    Case(
        J + "load_checkpoint",
        lambda r: dict(path=os.path.join(_saved("ckpt"), "seed0.npz")),
        args=(
            Arg(
                "path",
                "other",
                bad={**PATH_BAD, "garbage": lambda p: _garbage(".npz"), "suffix": lambda p: _garbage(".xyz")},
            ),
        ),
        errors=IO_ERRORS,
        dtype=STORED,
    ),
    Case(
        J + "load_checkpoints",
        lambda r: dict(paths_or_dir=_saved("ckpt")),
        args=(Arg("paths_or_dir", "other", bad={"missing": lambda p: p + "-missing"}),),
        errors=IO_ERRORS,
        dtype=STORED,
    ),
    Case(
        J + "save_params",
        lambda r: dict(params={"w": r.standard_normal((2, 2))}, path=tmpdir("m.npz")),
        args=(
            Arg("path", "other", bad={"suffix": "model.xyz"}),
            Arg("params", "other", bad={"bfloat16": {"w": jnp.ones(2, jnp.bfloat16)}}),
        ),
    ),
    Case(
        "jaxcompare.cli.save_params",
        lambda r: dict(params={"w": r.standard_normal((2, 2))}, path=tmpdir("m.npz")),
        args=(Arg("params", "other", label="w", bad={"bfloat16": {"w": jnp.ones(2, jnp.bfloat16)}}),),
    ),
    Case(
        "jaxcompare.cli.load_params",
        lambda r: dict(path=os.path.join(_saved("ckpt"), "seed0.npz")),
        args=(Arg("path", "other", bad={**PATH_BAD, "garbage": lambda p: _garbage(".npz")}),),
        errors=IO_ERRORS,
        dtype=STORED,
    ),
)

_ALPHA = jax.jit(lambda c: jc.alpha_hat(c, jnp.linspace(-2.0, 2.0, 15), threshold=0.3))

CHECKED = (
    Case(
        J + "checked",
        lambda r: dict(candidate=r.standard_normal(12), fn=_ALPHA),
        call=lambda candidate, fn: jc.checked(fn)(candidate),
        args=(Arg("candidate"), Arg("fn", "other", bad={"type": 3})),
        errors=(checkify.JaxRuntimeError,),
        jit="checked() raises on the host: it wraps a function, whose body is jitted (checked(jax.jit(f)))",
        dtype="the dtype of the wrapped function (alpha_hat's is checked with it)",
    ),
)

SIMILARITY = (
    Case(
        J + "kernel_similarity",
        lambda r: dict(key=key(r), p1=net(r)["params"], p2=net(r)["params"], x=r.standard_normal((6, 3))),
        call=lambda key, p1, p2, x: jc.kernel_similarity(key, [(mlp, p1), (mlp, p2)], x, n_permutations=9),
        args=(KEY, Arg("p1", "tree", label="params"), Arg("x", skip={"rank": ANY_X})),
        dtype="CKA values and p-values of the kernels' dtype",
        run="valid runs in tests/test_similarity.py (compile budget)",
    ),
)

PRECISION = (
    Case(
        "jaxcompare.ntk.precision",
        lambda r: {**net(r), "policy": "high"},
        call=lambda params, x1, policy: _under_precision(policy, params, x1),
        args=(Arg("policy", "other", label="precision", bad={"name": "fastest", "type": 3}),),
        dtype=WRAPPER,
    ),
)


def _under_precision(policy, params, x1):
    with jc.ntk.precision(policy):
        return jc.trace_ntk(mlp)(params, x1)


CASES = PRECISION + CHECKED + SIMILARITY + NTK + SURROGATE + COMPARE
