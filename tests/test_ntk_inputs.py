"""Inputs and outputs real models have (issue 14, scopes 4-5): pytree inputs (tokens + mask, image + metadata) and
per-token logits ``(N, L, V)`` through every kernel, transform and the CLI, against a float64 oracle written here
(``jax.jacrev`` per example, flattened with NumPy, explicit sums); clear errors for bad batches and for flax models in
training mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompare as jc

V, L, D, H, C = 7, 5, 4, 6, 3
TOL = dict(rtol=1e-10, atol=1e-10)


def _params(seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    n = lambda i, s: jax.random.normal(k[i], s, jnp.float64) / np.sqrt(s[0])  # noqa: E731
    return {
        "emb": n(0, (V, D)),
        "w1": n(1, (D, H)),
        "b1": 0.1 * jax.random.normal(k[2], (H,), jnp.float64),
        "out": n(3, (H, C)),
        "vocab": n(4, (H, V)),
    }


def _encode(p, x):
    """Embedding, then a dense tanh layer per position, masked: (N, L, H) and the float mask (N, L)."""
    m = x["mask"].astype(jnp.float64)
    h = jnp.tanh(p["emb"][x["tokens"]] @ p["w1"] + p["b1"][None, None, :])
    return h * m[..., None], m


def pooled_model(p, x):
    """{"tokens": int (N, L), "mask": bool (N, L)} -> (N, C): masked mean pooling then a linear head."""
    h, m = _encode(p, x)
    return (jnp.sum(h, axis=1) / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)) @ p["out"]


def token_model(p, x):
    """Per-token logits (N, L, V)."""
    return _encode(p, x)[0] @ p["vocab"]


def tuple_model(p, x):
    """(image (N, 3, 3, 2) float, metadata (N, 2) float) -> (N, C)."""
    img, meta = x
    f = jnp.concatenate([img.reshape(img.shape[0], -1), meta], axis=1)  # 20 features
    return jnp.tanh(f @ p["w"]) @ p["v"]


def _tokens(seed, n):
    k1, k2 = jax.random.split(jax.random.key(seed))
    mask = jax.random.uniform(k2, (n, L)) > 0.3
    return {"tokens": jax.random.randint(k1, (n, L), 0, V, dtype=jnp.int32), "mask": mask.at[:, 0].set(True)}


_JAC: dict = {}


def _jac(apply_fn, params, x):
    """Oracle: per-example flattened Jacobians (N, C_out, P), float64 NumPy (jacrev of one example at a time)."""
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if apply_fn not in _JAC:
        _JAC[apply_fn] = jax.jit(jax.jacrev(lambda p, xi: apply_fn(p, xi)[0].reshape(-1)))  # one example at a time
    jac = _JAC[apply_fn]
    rows = []
    for i in range(n):
        j = jac(params, jax.tree_util.tree_map(lambda l, i=i: l[i : i + 1], x))
        rows.append(np.concatenate([np.asarray(l).reshape(np.asarray(l).shape[0], -1) for l in jax.tree.leaves(j)], 1))
    return np.stack(rows)


def _oracle(apply_fn, params, x1, x2):
    j1, j2 = _jac(apply_fn, params, x1), _jac(apply_fn, params, x2)
    c = j1.shape[1]
    full = np.einsum("icp,jdp->ijcd", j1, j2)
    trace0 = np.einsum("icp,jcp->ij", j1, j2)
    g1, g2 = j1.sum(1), j2.sum(1)
    pseudo0 = g1 @ g2.T / c
    d1, d2 = np.einsum("icp,icp->i", j1, j1), np.einsum("icp,icp->i", j2, j2)
    return dict(full=full, trace0=trace0, trace=trace0 / np.sqrt(np.outer(d1, d2)), pseudo0=pseudo0)


@pytest.fixture(scope="module")
def setup():
    p = _params()
    x1, x2 = _tokens(1, 6), _tokens(2, 5)
    return p, x1, x2, _oracle(pooled_model, p, x1, x2), _oracle(token_model, p, x1, x2)


@pytest.mark.parametrize("impl", ["jacobian", "ntvp", "structured"])
def test_pytree_inputs_every_gradient_kernel(setup, impl):
    p, x1, x2, o, _ = setup
    np.testing.assert_allclose(jc.trace_ntk(pooled_model, implementation=impl)(p, x1, x2), o["trace"], **TOL)
    if impl != "ntvp":  # (ntvp: the slowest to compile; its trace kernel above runs the same packed inputs)
        np.testing.assert_allclose(jc.pseudo_ntk(pooled_model, implementation=impl)(p, x1, x2), o["pseudo0"], **TOL)
        np.testing.assert_allclose(jc.empirical_ntk(pooled_model, implementation=impl)(p, x1, x2), o["full"], **TOL)


@pytest.mark.parametrize("impl", ["jacobian", "structured"])
def test_per_token_logits_trace_over_positions(setup, impl):
    """Outputs (N, L, V): every (position, class) pair is one output (index t*V + c)."""
    p, x1, x2, _, o = setup
    np.testing.assert_allclose(jc.trace_ntk(token_model, implementation=impl)(p, x1, x2), o["trace"], **TOL)
    # pNTK: (1 / (L V)) <grad of the sum over positions and classes>
    np.testing.assert_allclose(jc.pseudo_ntk(token_model, implementation=impl)(p, x1, x2), o["pseudo0"], **TOL)
    e = jc.empirical_ntk(token_model, implementation=impl)(p, x1, x2)
    assert e.shape == (6, 5, L * V, L * V)
    np.testing.assert_allclose(e, o["full"], **TOL)


def test_two_dimensional_outputs_and_array_inputs_unchanged():
    """An array batch with (N, C) outputs goes through the very same code path (bit-identical)."""
    from jaxcompare.ntk._inputs import canonical

    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]  # noqa: E731
    x = jnp.ones((3, 4))
    fn, c1, c2 = canonical(f, x, None, 2)
    assert fn is f and c1 is x and c2 is None


def test_tuple_inputs_oracle_and_same_as_dict():
    k = jax.random.split(jax.random.key(3), 4)
    p = {"w": jax.random.normal(k[0], (20, 8), jnp.float64) / 4, "v": jax.random.normal(k[1], (8, C), jnp.float64)}
    x = (jax.random.normal(k[2], (5, 3, 3, 2), jnp.float64), jax.random.normal(k[3], (5, 2), jnp.float64))
    o = _oracle(tuple_model, p, x, x)
    np.testing.assert_allclose(jc.trace_ntk(tuple_model)(p, x), o["trace"], **TOL)
    np.testing.assert_allclose(jc.pseudo_ntk(tuple_model, implementation="structured")(p, x), o["pseudo0"], **TOL)
    as_dict = lambda p, d: tuple_model(p, (d["img"], d["meta"]))  # noqa: E731
    np.testing.assert_allclose(jc.trace_ntk(as_dict)(p, {"img": x[0], "meta": x[1]}), o["trace"], **TOL)


def test_transforms_with_pytree_inputs(setup, tmp_path):
    """batched (eager and jitted), sharded, kernel_to_disk: equal to the unbatched kernel (blocks not dividing N)."""
    p, x1, x2, o, ot = setup
    k = jc.trace_ntk(pooled_model)
    np.testing.assert_allclose(jc.batched(k, 4)(p, x1), _oracle_sym(pooled_model, p, x1), **TOL)
    np.testing.assert_allclose(jax.jit(jc.batched(k, 4))(p, x1, x2), o["trace"], **TOL)
    np.testing.assert_allclose(jc.sharded(k, block_size=4)(p, x1, x2), o["trace"], **TOL)
    kd = jc.kernel_to_disk(jc.pseudo_ntk(token_model), p, x1, x2, path=tmp_path / "a", block_size=4)
    np.testing.assert_allclose(kd, ot["pseudo0"], **TOL)
    # a store is fingerprinted with the whole pytree: other tokens are another run
    x2b = dict(x2, tokens=(x2["tokens"] + 1) % V)
    with pytest.raises(ValueError, match="different inputs"):
        jc.kernel_to_disk(jc.pseudo_ntk(token_model), p, x1, x2b, path=tmp_path / "a", block_size=4)


def _oracle_sym(f, p, x):
    return _oracle(f, p, x, x)["trace"]


def test_projected_and_feature_kernels_with_pytree_inputs(setup):
    """Projected kernels see the same gradients as the same model fed one array; CK/Em of pytree inputs."""
    p, x1, x2, _, _ = setup

    def as_array(p, xa):  # the same model on one float array [tokens, mask]
        return pooled_model(p, {"tokens": xa[:, :L].astype(jnp.int32), "mask": xa[:, L:] > 0.5})

    xa1 = jnp.concatenate([x1["tokens"], x1["mask"]], axis=1).astype(jnp.float64)
    xa2 = jnp.concatenate([x2["tokens"], x2["mask"]], axis=1).astype(jnp.float64)
    proj = jc.random_projection(jax.random.key(5), 16)
    a = jc.pseudo_ntk(pooled_model, projection=proj)(p, x1, x2)
    np.testing.assert_allclose(a, jc.pseudo_ntk(as_array, projection=proj)(p, xa1, xa2), **TOL)
    feats = lambda p, x: p["emb"][x["tokens"]] * x["mask"][..., None]  # noqa: E731
    f1, f2 = np.asarray(feats(p, x1)).reshape(6, -1), np.asarray(feats(p, x2)).reshape(5, -1)
    np.testing.assert_allclose(jc.conjugate_kernel(feats)(p, x1, x2), f1 @ f2.T, **TOL)
    em = jc.embedding_kernel(lambda p, x: [feats(p, x), _encode(p, x)[0]], normalize=False)(p, x1, x2)
    h1, h2 = (np.asarray(_encode(p, x)[0]).reshape(x["mask"].shape[0], -1) for x in (x1, x2))
    np.testing.assert_allclose(em, f1 @ f2.T + h1 @ h2.T, **TOL)


def test_explain_with_pytree_inputs(setup):
    p, x1, _, _, _ = setup
    e = jc.ntk.explain(token_model, p, x1)
    status = {path: s for path, _, s, _ in e.leaves}
    assert status["['w1']"] == "structured" and status["['emb']"] == "structured"  # a gather of rows: token ids
    assert e.auto == "structured"


def test_bad_batches_have_clear_errors(setup):
    p, x1, x2, _, _ = setup
    k = jc.trace_ntk(pooled_model)
    with pytest.raises(ValueError, match=r"same leading \(batch\) size.*x1\['mask'\]: 4"):
        k(p, dict(x1, mask=x1["mask"][:4]))
    with pytest.raises(ValueError, match="same structure"):
        k(p, x1, (x2["tokens"], x2["mask"]))
    with pytest.raises(ValueError, match="same structure"):
        k(p, x1, {"tokens": x2["tokens"]})
    with pytest.raises(ValueError, match=r"per-example shapes: x1\['mask'\] has \(5,\), x2\['mask'\] has \(4,\)"):
        k(p, x1, dict(x2, mask=x2["mask"][:, :4]))
    with pytest.raises(ValueError, match=r"x1\['w'\] must be finite.*1 NaN"):
        jc.trace_ntk(lambda p, x: pooled_model(p, x) * x["w"][:, None])(p, dict(x1, w=jnp.ones(6).at[2].set(jnp.nan)))
    with pytest.raises(ValueError, match=r"x1\['mask'\] is empty"):
        k(p, {"tokens": x1["tokens"][:0], "mask": x1["mask"][:0]})
    with pytest.raises(ValueError, match="holds no arrays"):
        k(p, {})
    with pytest.raises(ValueError, match=r"x1\['n'\] is a scalar"):
        k(p, dict(x1, n=jnp.float64(1.0)))
    with pytest.raises(TypeError, match=r"x2\['tokens'\] has complex dtype"):
        k(p, x1, dict(x2, tokens=x2["tokens"].astype(jnp.complex64)))
    with pytest.raises(TypeError, match=r"x1\['tokens'\] and x2\['tokens'\] must both be integer"):
        k(p, x1, dict(x2, tokens=x2["tokens"].astype(jnp.float32)))  # promoted together: float token ids
    for t in (jc.batched(k, 4), jc.sharded(k)):
        with pytest.raises(ValueError, match="same leading"):
            t(p, dict(x1, mask=x1["mask"][:4]))
    # object, string and raw-byte arrays: an error naming the argument (was JAX's "not a valid JAX array type")
    f = lambda p, x: x @ p["w"]  # noqa: E731
    objs = np.empty((2, 2), object)
    objs[:] = 1.0
    with pytest.raises(TypeError, match=r"x1 has dtype object.*np.asarray\(x1, dtype=np.float32\)"):
        jc.trace_ntk(f)({"w": jnp.ones((2, 3))}, objs)
    with pytest.raises(TypeError, match=r"x2 has dtype <U1.*encode"):
        jc.trace_ntk(f)({"w": jnp.ones((2, 3))}, np.ones((2, 2)), np.full((2, 2), "a"))
    with pytest.raises(TypeError, match=r"x1\['mask'\] has dtype object"):
        k(p, dict(x1, mask=np.asarray(x1["mask"]).astype(object)))
    with pytest.raises(TypeError, match=r"x1 has dtype \|V4"):
        jc.project_gradients(
            f, {"w": jnp.ones((2, 3))}, np.zeros((2, 2), "V4"), jc.structured_projection(jax.random.key(0), 8)
        )
    # a list of Python numbers is still one array
    assert jc.trace_ntk(f)({"w": jnp.ones((2, 3))}, [[1.0, 2.0], [3.0, 4.0]]).shape == (2, 2)


def test_flax_models_in_training_mode():
    nnx = pytest.importorskip("flax.nnx")
    import flax.linen as nn

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.bn = nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.drop, self.l2 = nnx.Dropout(0.5, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(self.drop(self.bn(self.l1(x))))

    net = Net(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"training mode.*BatchNorm 'bn'.*Dropout 'drop'.*call model\.eval\(\) first"):
        jc.from_nnx(net)
    net.eval()
    f, p = jc.from_nnx(net)
    assert jc.trace_ntk(f)(p, jnp.ones((3, 3))).shape == (3, 3)

    class FlagAtCall(nnx.Module):  # the training flag passed in the call: eval() does not reach it
        def __init__(self, rngs):
            self.l1, self.bn, self.l2 = (
                nnx.Linear(3, 4, rngs=rngs),
                nnx.BatchNorm(4, rngs=rngs),
                nnx.Linear(4, 2, rngs=rngs),
            )

        def __call__(self, x):
            return self.l2(self.bn(self.l1(x), use_running_average=False))

    at_call = FlagAtCall(nnx.Rngs(0))
    at_call.eval()
    f, p = jc.from_nnx(at_call)
    for call in (lambda: jc.trace_ntk(f)(p, jnp.ones((3, 3))), lambda: jc.ntk.explain(f, p, jnp.ones((3, 3)))):
        with pytest.raises(ValueError, match=r"mutates its state.*training mode.*use_running_average=False"):
            call()

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            return nn.Dense(2)(nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x)))

    x = jnp.ones((3, 3))
    v = Lin().init(jax.random.key(0), x, train=False)
    f, p = jc.from_linen(Lin(), v)
    with pytest.raises(ValueError, match=r"training mode.*batch_stats.*train=False"):
        jc.trace_ntk(f)(p, x)
    f, p = jc.from_linen(Lin(), v, train=False)
    assert jc.trace_ntk(f)(p, x).shape == (3, 3)


MODEL = textwrap.dedent("""
    import jax.numpy as jnp
    def apply_fn(params, x):
        e = params["emb"][x["tokens"]] * x["mask"][..., None]
        return jnp.tanh(e.sum(1) @ params["w"])
    def tuple_fn(params, x):
        return apply_fn(params, {"tokens": x[0], "mask": x[1]})
""")


def test_cli_reads_pytree_inputs(tmp_path, capsys, monkeypatch):
    from jaxcompare.cli._main import main

    rng = np.random.default_rng(0)
    (tmp_path / "tokmodel.py").write_text(MODEL)
    p = {"emb": rng.normal(size=(V, D)), "w": rng.normal(size=(D, C))}
    np.savez(tmp_path / "params.npz", **p)
    tok, mask = rng.integers(0, V, size=(6, L)).astype(np.int32), rng.random((6, L)) > 0.3
    np.savez(tmp_path / "x.npz", **{"x/tokens": tok, "x/mask": mask, "y": np.arange(6)})  # y: ignored
    np.savez(tmp_path / "xt.npz", **{"x/0": tok, "x/1": mask})
    np.savez(tmp_path / "bad.npz", tokens=tok, mask=mask)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["ntk", "--params", "params.npz", "--kernel", "trntk0", "--block-size", "4"]
    assert main(base + ["--model", "tokmodel:apply_fn", "--data", "x.npz", "--out", "k.npy"]) == 0
    assert main(base + ["--model", "tokmodel:tuple_fn", "--data", "xt.npz", "--out", "kt.npy"]) == 0
    pj = {k: jnp.asarray(v) for k, v in p.items()}
    oracle = _oracle(
        lambda q, x: jnp.tanh((q["emb"][x["tokens"]] * x["mask"][..., None]).sum(1) @ q["w"]),
        pj,
        {"tokens": tok, "mask": mask},
        {"tokens": tok, "mask": mask},
    )["trace0"]
    np.testing.assert_allclose(np.load(tmp_path / "k.npy"), oracle, rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "kt.npy"), oracle, rtol=1e-6)
    capsys.readouterr()
    assert main(base + ["--model", "tokmodel:apply_fn", "--data", "bad.npz", "--out", "kb.npy"]) == 2
    assert "x/<name>" in capsys.readouterr().err


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jaxcompare as jc
    from test_ntk_inputs import _params, _tokens, pooled_model
    p, x1, x2 = _params(), _tokens(1, 6), _tokens(2, 5)
    k = jc.trace_ntk(pooled_model)   # the unsharded kernel (tested against the oracle in the main process)
    ks = jc.sharded(k, block_size=2, pad=True)
    np.testing.assert_allclose(ks(p, x1)[:6], k(p, x1), rtol=1e-12, atol=1e-12)       # symmetric scheme, padded
    np.testing.assert_allclose(ks(p, x1, x2)[:6], k(p, x1, x2), rtol=1e-12, atol=1e-12)  # strips
    print("ok", len(jax.devices()))
""")


def test_sharded_pytree_inputs_on_four_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(__file__))
    r = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok 4" in r.stdout
