"""Issue 15 defects of the kernel path, each with a test that fails without its fix: the on-disk store verifies what
it trusts (model fingerprint, truncated/replaced/edited files, corrupt ledger, concurrent writers, free space);
weights cast through an integer type have zero gradient (float64 Jacobian oracle); transforms check parameters;
integer parameters and complex inputs are refused. Also: jc.ntk.explain and the layer analysis on its own."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc
from jaxcompare.ntk import _ooc
from jaxcompare.ntk._structured import analyze

TOL64 = dict(rtol=1e-10, atol=1e-10)


def _data(n=9):
    f, p = mlp(jax.random.key(0))
    return f, p, jax.random.normal(jax.random.key(1), (n, 5))


def _run(k, p, x, path, **kw):
    return np.array(jc.kernel_to_disk(k, p, x, path=path, block_size=4, progress_bar=False, **kw))


def test_store_fingerprints_the_model(tmp_path):
    f, p, x = _data()

    def g(q, xx):  # same parameters and shapes, relu instead of tanh
        return jax.nn.relu(xx @ q["W1"] + q["b1"][None, :]) @ q["W2"] + q["b2"][None, :]

    _run(jc.trace_ntk(f), p, x, tmp_path)
    with pytest.raises(ValueError, match="different model"):
        _run(jc.trace_ntk(g), p, x, tmp_path)
    np.testing.assert_allclose(
        _run(jc.trace_ntk(g), p, x, tmp_path, overwrite=True), oracle_kernels(g, p, x, x)["trntk"], **TOL64
    )


_SET_MODEL = """
import jax, jax.numpy as jnp, numpy as np, jaxcompare as jc, sys

ACT = "tanh"

def f(p, x):
    h = x @ p["w1"]
    h = jnp.tanh(h) if ACT in {"tanh", "gelu", "relu", "sigmoid", "swish"} else h
    return h @ p["w2"]

rng = np.random.default_rng(0)
p = {"w1": rng.standard_normal((4, 6)), "w2": rng.standard_normal((6, 3))}
x = rng.standard_normal((8, 4))
share = int(sys.argv[2])
k = jc.kernel_to_disk(jc.trace_ntk(f), p, x, path=sys.argv[1], block_size=4, progress_bar=False,
                      process_index=share, process_count=2)
print("done", share)
"""


def test_store_fingerprint_does_not_depend_on_the_hash_seed(tmp_path):
    """A model whose code holds a set literal (``act in {"tanh", "gelu"}``) got another fingerprint in every
    process (the set's repr follows string hashing, randomised per process), so the second share of an array job
    was refused as "a different model". Share 0 is written by this process, share 1 by a process with another
    PYTHONHASHSEED, one in which the set's repr is checked to differ from this process's; they share one store, and
    the kernel is the in-memory one. (The fingerprint hashes code objects, not file names: the model exec'd here
    and the one run from the script file are the same model.)"""
    import os
    import subprocess
    import sys

    script = tmp_path / "setmodel.py"
    script.write_text(_SET_MODEL)
    ns: dict = {}
    exec(compile(_SET_MODEL.split("share =")[0], "setmodel", "exec"), ns)  # the model, params and inputs
    the_set = 'repr(frozenset({"tanh", "gelu", "relu", "sigmoid", "swish"}))'
    here = eval(the_set)
    for seed in map(str, range(1, 20)):  # a hash seed whose set order differs from this process's (a cheap probe)
        env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
        there = subprocess.run([sys.executable, "-c", f"print({the_set})"], env=env, capture_output=True, text=True)
        if there.stdout.strip() != here:
            break
    assert there.stdout.strip() not in ("", here), (there.stdout, there.stderr[-2000:])
    with pytest.warns(RuntimeWarning, match="not written yet"):  # share 1 comes after
        jc.kernel_to_disk(jc.trace_ntk(ns["f"]), ns["p"], ns["x"], path=tmp_path / "st", block_size=4,
                          progress_bar=False, process_index=0, process_count=2)  # fmt: skip
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "st"), "1"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "done 1" in r.stdout, r.stderr[-2000:]
    np.testing.assert_allclose(
        jc.load_kernel(tmp_path / "st"), np.asarray(jc.trace_ntk(ns["f"])(ns["p"], ns["x"])), rtol=1e-12
    )


def test_store_detects_truncated_replaced_and_edited_files(tmp_path):
    f, p, x = _data()
    want = oracle_kernels(f, p, x, x)["trntk"]
    k = jc.trace_ntk(f)
    _run(k, p, x, tmp_path)
    kp = tmp_path / "kernel.npy"
    kp.write_bytes(kp.read_bytes()[:-40])  # truncated
    with pytest.warns(RuntimeWarning, match="truncated"):
        np.testing.assert_allclose(_run(k, p, x, tmp_path), want, **TOL64)
    np.save(kp, np.zeros((9, 9), np.float32))  # replaced by another dtype
    with pytest.warns(RuntimeWarning, match="shape/dtype"):
        np.testing.assert_allclose(_run(k, p, x, tmp_path), want, **TOL64)
    mm = np.load(kp, mmap_mode="r+")
    mm[5, 1] += 0.25  # an edited entry of a mirrored tile
    mm.flush()
    del mm
    with pytest.warns(RuntimeWarning, match="checksums"):
        np.testing.assert_allclose(_run(k, p, x, tmp_path), want, **TOL64)
    np.save(tmp_path / "norms.npy", np.ones(18))  # edited norms
    with pytest.warns(RuntimeWarning, match="norms"):
        np.testing.assert_allclose(_run(k, p, x, tmp_path), want, **TOL64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact store: reopened silently
        np.testing.assert_allclose(_run(k, p, x, tmp_path), want, **TOL64)


def test_store_corrupt_ledger_lock_and_disk_space(tmp_path, monkeypatch):
    f, p, x = _data()
    k = jc.trace_ntk(f, normalize=False)
    _run(k, p, x, tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="overwrite=True"):
        _run(k, p, x, tmp_path)
    np.testing.assert_allclose(_run(k, p, x, tmp_path, overwrite=True), oracle_kernels(f, p, x, x)["trntk0"], **TOL64)
    assert json.loads((tmp_path / "state.json").read_text())["done"] == list(range(6))
    import fcntl

    with open(tmp_path / ".lock", "a+") as other:  # another writer holds the lock
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another process"):
            _run(k, p, x, tmp_path, overwrite=True)
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)

    class Full:
        free = 1000

    monkeypatch.setattr(_ooc.shutil, "disk_usage", lambda _: Full)
    with pytest.raises(OSError, match="not enough free disk space"):
        _run(k, p, x, tmp_path / "new")


def test_transforms_check_params_and_dtypes(tmp_path):
    f, p, x = _data(6)
    bad = dict(p, W1=p["W1"].at[0, 0].set(jnp.nan))
    for t in (lambda k: jc.batched(k, 4), lambda k: jc.sharded(k)):
        with pytest.raises(ValueError, match=r"params\['W1'\] must be finite"):
            t(jc.trace_ntk(f))(bad, x)
    with pytest.raises(ValueError, match=r"params\['W1'\] must be finite"):
        _run(jc.trace_ntk(f), bad, x, tmp_path)
    ints = jax.tree_util.tree_map(lambda a: jnp.round(10 * a).astype(jnp.int32), p)
    for k in (jc.trace_ntk(f), jc.batched(jc.trace_ntk(f), 4)):
        with pytest.raises(TypeError, match="floating-point"):
            k(ints, x)
    with pytest.raises(TypeError, match="complex"):
        jc.trace_ntk(f)(p, x.astype(jnp.complex128))
    with pytest.raises(TypeError, match="complex"):
        jc.batched(jc.trace_ntk(f), 4)(p, x, x.astype(jnp.complex128))


def test_a_kernel_function_passed_as_the_model_is_refused():
    # a kernel's (N, N) output would be read as N logits per example: explain() listed every leaf as a fallback and
    # trace_ntk(trace_ntk(f)) computed a kernel of a kernel, with no error
    f, p, x = _data(6)
    k = jc.trace_ntk(f)
    proj = jc.structured_projection(jax.random.key(0), 8)
    calls = [
        ("apply_fn", lambda g: jc.ntk.explain(g, p, x)),
        ("apply_fn", lambda g: jc.trace_ntk(g)),
        ("apply_fn", lambda g: jc.empirical_ntk(g)),
        ("apply_fn", lambda g: jc.project_gradients(g, p, x, proj)),
        ("feature_fn", lambda g: jc.conjugate_kernel(g)),
    ]
    for name, call in calls:
        for g in (k, jax.jit(k), jc.batched(k, 4)):
            with pytest.raises(TypeError, match=f"{name} is a kernel function .* not a model"):
                call(g)
        call(f)  # the model itself is taken
    assert jc.ntk.explain(f, p, x).auto == "structured"


def test_integer_cast_weight_has_zero_gradient():
    """Fake quantization: autodiff gives W.astype(int8).astype(float) zero gradient; so must the structured path."""
    _, p = mlp(jax.random.key(0))
    p = dict(p, W1=3 * p["W1"])  # entries of a few units: the int8 cast keeps most of them nonzero

    def f(q, x):
        w1 = q["W1"].astype(jnp.int8).astype(x.dtype)
        return jnp.tanh(x @ w1 + q["b1"][None, :]) @ q["W2"] + q["b2"][None, :]

    x1 = jax.random.normal(jax.random.key(1), (5, 5))
    x2 = jax.random.normal(jax.random.key(2), (3, 5))
    o = oracle_kernels(f, p, x1, x2)
    for impl in ("structured", "auto", "jacobian"):
        np.testing.assert_allclose(
            jc.trace_ntk(f, normalize=False, implementation=impl)(p, x1, x2), o["trntk0"], **TOL64
        )
        np.testing.assert_allclose(jc.empirical_ntk(f, implementation=impl)(p, x1, x2), o["full"], **TOL64)
    plan = analyze(f, p, (5,), x1.dtype)
    assert "integer" in plan.reasons[0] and 0 in plan.fallback


def test_layer_analysis_reasons():
    """The analysis alone, on hand-written models whose classification is known."""
    p = {
        "a": jnp.ones((3, 4)),
        "b": jnp.ones(4),
        "e": jnp.ones((4, 4)),
        "s": jnp.ones(4),
        "u": jnp.ones(2),
        "v": jnp.ones(4),
        "z": jnp.ones(2, jnp.int32),
    }

    def f(q, x):
        h = jnp.tanh(x @ q["a"] + q["b"][None, :])  # dense + fused bias
        h = h * q["s"][None, :]  # elementwise scale: structured (a sum over positions)
        h = h * jnp.exp(q["v"])[None, :]  # a function of the leaf, not the leaf: fallback
        return (h @ q["e"]) @ q["e"][:, :2]  # shared weight: fallback; u, z unused

    r = dict(zip(sorted(p), analyze(f, p, (3,), jnp.float64).reasons))
    assert r["a"].startswith("structured: dense") and r["b"].startswith("structured: bias")
    assert r["s"].startswith("structured: elementwise scale") and r["v"].startswith("fallback: used by exp")
    assert r["e"].startswith("fallback: used 2 times")
    assert r["u"].startswith("none: not used") and r["z"].startswith("none: dtype int32")
    e = jc.ntk.explain(f, dict(p, z=jnp.ones(2)), jnp.ones((2, 3)))
    assert e.auto == "structured" and [row[2] for row in e.leaves] == [
        "structured",
        "structured",
        "fallback",
        "structured",
        "none",
        "fallback",
        "none",
    ]


def test_auto_choice_is_cached(monkeypatch):
    from jaxcompare.ntk import _implementations as I

    f, p, x = _data(4)
    calls = []
    real = I._decide
    monkeypatch.setattr(I, "_decide", lambda *a: calls.append(1) or real(*a))
    k = jc.trace_ntk(f)
    for _ in range(3):
        k(p, x)
    k(p, x[:3])
    assert len(calls) <= 2  # once per input shape, not once per call


def _sqrt_model(p, x):
    """sqrt(x @ w) @ v: its gradient is inf/NaN where x @ w = 0 (the derivative of sqrt at 0)."""
    return jnp.sqrt(x @ p["w"]) @ p["v"]


@pytest.mark.parametrize("factory", [jc.trace_ntk, jc.empirical_ntk, jc.pseudo_ntk])
@pytest.mark.parametrize("impl", ["auto", "jacobian"])
def test_non_finite_gradients_raise_naming_the_points(factory, impl):
    """Finite params and inputs, gradients NaN at point 2 only (1/sqrt(0)): an error naming point 2, never a NaN."""
    p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    x = jnp.ones((5, 3)).at[2].set(0.0)
    assert not np.isfinite(np.asarray(jax.jacrev(_sqrt_model)(p, x[2:3])["w"])).all()  # the premise, by jax itself
    with pytest.raises(FloatingPointError, match=r"x1 points \[2\] and x2 points \[2\]"):
        factory(_sqrt_model, implementation=impl)(p, x)
    ok = jnp.ones((4, 3))
    assert np.isfinite(np.asarray(factory(_sqrt_model, implementation=impl)(p, ok))).all()


@pytest.mark.parametrize("impl", ["structured", "jacobian"])
def test_batched_kernels_are_never_silently_non_finite(impl):
    """Tiled by batched (the CLI's path), with and without x2: NaN gradients at point 2 raise naming it; a float16
    model whose gradients overflow raises the overflow error (a plain FloatingPointError, also where the tile's own
    check runs as a host callback inside its jit)."""
    p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    x = jnp.ones((5, 3)).at[2].set(0.0)
    k = jc.batched(jc.trace_ntk(_sqrt_model, implementation=impl, normalize=False), 2, progress_bar=False)
    with pytest.raises(FloatingPointError, match=r"points \[2\]"):
        k(p, x)
    with pytest.raises(FloatingPointError, match=r"points \[2\]"):
        k(p, x, x[:4])
    big = {"w": jnp.full((3, 4), 30.0, jnp.float16), "v": jnp.full((4, 2), 30.0, jnp.float16)}

    def f16(q, xx):
        return jnp.tanh(xx @ q["w"]) @ q["v"] * jnp.float16(3000.0)  # gradients up to ~3·10⁶: beyond float16

    k16 = jc.batched(jc.trace_ntk(f16, implementation=impl), 2, progress_bar=False)
    for args in ((jnp.ones((5, 3), jnp.float16),), (jnp.ones((5, 3), jnp.float16), jnp.ones((3, 3), jnp.float16))):
        with pytest.raises(FloatingPointError, match="float16"):
            k16(big, *args)


def test_one_model_function_at_several_widths():
    """A width sweep with one apply_fn: each width's kernel is its own (the compiled programs are keyed by the
    parameters' shapes and dtypes, not only their structure), default call and batched, against the oracle."""

    def f(q, xx):
        return jnp.tanh(xx @ q["w"]) @ q["v"]

    x = jax.random.normal(jax.random.key(1), (6, 3))
    for h in (9, 4, 9):
        q = {"w": jax.random.normal(jax.random.key(h), (3, h)), "v": jax.random.normal(jax.random.key(h + 1), (h, 2))}
        want = oracle_kernels(f, q, x, x)["trntk0"]
        for kfn in (jc.trace_ntk(f, normalize=False), jc.batched(jc.trace_ntk(f, normalize=False), 4)):
            np.testing.assert_allclose(kfn(q, x), want, rtol=1e-10, atol=1e-10)


def test_a_transient_non_finite_result_is_recomputed_with_a_warning():
    """A backend fault (non-finite once, finite when recomputed) returns the recomputed kernel and says so."""
    from jaxcompare.ntk._kernels import _checked_result

    good = jnp.eye(3)
    with pytest.warns(RuntimeWarning, match="recomputed"):
        k, d = _checked_result(lambda: (good, jnp.ones(3), None), jnp.full((3, 3), jnp.nan), None, "trace kernel", "x")
    np.testing.assert_array_equal(k, np.eye(3))
    np.testing.assert_array_equal(d, np.ones(3))
    with pytest.raises(FloatingPointError, match="scattered"):  # NaN twice, in no whole row: reported as entries
        _checked_result(lambda: (good.at[0, 1].set(jnp.inf), None, None), good.at[0, 1].set(jnp.nan), None, "k", "x")


def test_bfloat16_nan_inputs_are_named():
    """NumPy sees bfloat16 as kind "V": its NaN/inf must still be caught at the boundary, naming the leaf."""
    p = {"w": jnp.ones((3, 4), jnp.bfloat16), "v": jnp.ones((4, 2), jnp.bfloat16)}
    x = jnp.ones((5, 3), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"params\['w'\] must be finite, but it has 1 NaN"):
        jc.trace_ntk(_sqrt_model)({**p, "w": p["w"].at[0, 0].set(jnp.nan)}, x)
    with pytest.raises(ValueError, match="x1 must be finite, but it has 0 NaN and 1 infinite"):
        jc.trace_ntk(_sqrt_model)(p, x.at[1, 1].set(jnp.inf))


def test_inputs_smaller_than_a_block_are_not_padded():
    """batched and sharded with a block larger than the input (the CLI's default 256 on a small set): the model is
    never traced with more rows than the input has, eagerly, under jit, with x2, and on the diagonal."""
    seen = set()

    def f(q, xx):
        seen.add(xx.shape[0])
        return jnp.tanh(xx @ q["w"]) @ q["v"]

    q = {"w": jax.random.normal(jax.random.key(0), (3, 4)), "v": jax.random.normal(jax.random.key(1), (4, 2))}
    x = jax.random.normal(jax.random.key(2), (5, 3))
    oracle = oracle_kernels(f, q, x, x)  # (it calls the model with x1 and x2 stacked)
    want = oracle["trntk0"]
    seen.clear()
    for impl in ("structured", "jacobian"):
        k = jc.trace_ntk(f, implementation=impl, normalize=False)
        for kfn in (jc.batched(k, 512, progress_bar=False), jax.jit(jc.batched(k, 512)), jc.sharded(k, block_size=512)):
            np.testing.assert_allclose(kfn(q, x), want, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(kfn(q, x, x[:3]), want[:, :3], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            jc.batched(jc.trace_ntk(f, implementation=impl), 512, progress_bar=False)(q, x),
            oracle["trntk"],
            rtol=1e-10,
            atol=1e-10,
        )
    assert max(seen) <= 5, seen


def test_integer_logits_and_yes_no_options_are_refused():
    """Integer outputs have no gradient (every kernel would be zero): refused, naming the dtype; yes/no options
    are booleans, never a string read as true."""
    p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    x = jnp.ones((5, 3))

    def argmax_model(q, xx):
        return jnp.argmax(xx @ q["w"], axis=1, keepdims=True).astype(jnp.int32) * jnp.ones((1, 2), jnp.int32)

    for impl in ("auto", "jacobian"):
        with pytest.raises(TypeError, match="floating-point logits, got dtype int32"):
            jc.trace_ntk(argmax_model, implementation=impl)(p, x)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        jc.trace_ntk(_sqrt_model, normalize="no")
    with pytest.raises(TypeError, match="progress_bar must be True or False"):
        jc.batched(jc.trace_ntk(_sqrt_model), 2, progress_bar="no")


def test_pair_structure_and_save_rows_targets(tmp_path):
    """A pytree x1 with an array x2 (or the reverse) gets the structure error (jax's tree comparison refused None);
    save_rows refuses a directory and bfloat16 before writing anything, and leaves no temporary file."""
    p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}

    def f(q, x):
        x = x["a"] if isinstance(x, dict) else x
        return jnp.tanh(x @ q["w"]) @ q["v"]

    x = jnp.ones((4, 3))
    for a, b in (({"a": x}, x), (x, {"a": x})):
        with pytest.raises(ValueError, match="must have the same structure"):
            jc.trace_ntk(f)(p, a, b)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="got the directory"):
        jc.save_rows(jnp.eye(4), tmp_path / "sub")
    with pytest.raises(TypeError, match="cast K from bfloat16"):
        jc.save_rows(jnp.eye(4, dtype=jnp.bfloat16), tmp_path / "K.npy")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["sub"] and not list((tmp_path / "sub").iterdir())


def test_float64_inputs_beyond_float32_are_named(tmp_path):
    """Without x64, finite float64 inputs beyond float32's range would turn into inf inside JAX (reported as the
    model's non-finite gradients): named as the inputs' range instead (a child process: this suite runs with x64)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(
        "import numpy as np, jax.numpy as jnp, jaxcompare as jc\n"
        "x = np.ones((4, 3)); x[1, 2] = 1e39\n"
        "p = {'w': jnp.ones((3, 2))}\n"
        "try:\n    jc.trace_ntk(lambda q, xx: xx @ q['w'])(p, x)\nexcept ValueError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, check=True).stdout
    assert "x1 has values up to 1e+39, beyond float32's range" in out


def test_feature_kernels_are_never_silently_non_finite():
    """CK and Em of finite params and inputs whose features are NaN at point 1 (log of a negative): an error naming
    the point and the features (not the gradients), untiled, normalized and tiled by batched."""
    p = {"w": jnp.ones((3, 2))}
    x = jnp.ones((4, 3)).at[1].set(-1.0)

    def feats(q, xx):
        return jnp.log(xx @ q["w"])

    def layers(q, xx):
        return [xx, jnp.log(xx @ q["w"])]

    kernels = [jc.conjugate_kernel(feats), jc.conjugate_kernel(feats, normalize=True), jc.embedding_kernel(layers)]
    kernels.append(jc.batched(jc.conjugate_kernel(feats), 2, progress_bar=False))
    for k in kernels:
        with pytest.raises(
            FloatingPointError, match=r"features of (feature_fn|layers_fn) are not finite.*points \[1\]"
        ):
            k(p, x)
    np.testing.assert_allclose(jc.conjugate_kernel(feats)(p, jnp.ones((3, 3))), np.full((3, 3), 2 * np.log(3.0) ** 2))
