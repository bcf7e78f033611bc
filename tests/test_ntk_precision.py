"""Precision policy of the NTK family (jaxcompare/_precision.py): ``precision=`` and ``jc.ntk.precision(...)`` resolve
and recompile; bfloat16/float16 models accumulate in float32 and get float32 kernels from every implementation,
within a few low-precision ulps of a float64 Jacobian oracle of the same (rounded) weights; float16 overflow raises.

Oracle (:func:`_oracle`): per-example float64 Jacobians of the flattened parameters (``jax.jacrev``, x64 enabled in
conftest.py) contracted in NumPy float64, evaluated on the low-precision weights and inputs cast exactly to float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcompare as jc
from jaxcompare._precision import resolve_precision
from jaxcompare.ntk._implementations import IMPLEMENTATIONS

IMPLS = ["auto", *sorted(IMPLEMENTATIONS)]
DN = ("NHWC", "HWIO", "NHWC")
# documented tolerance (max |K - K_oracle| / max |K_oracle|): the error of the model's own low-precision Jacobian
# contracted exactly (the rounding of the gradients themselves: "baseline"), times FACTOR: the implementations that
# contract gradients or their factors in float32 match it (measured 0.9-1.1x), the NTK-vector products form each entry
# in the model's dtype (measured up to 3.7x); bfloat16 accumulation or output (before the policy) measured 2-10x.
# TOL caps the error absolutely: a few ulps of the dtype (bfloat16 ulp 2^-8, float16 2^-11 near 1).
TOL = {jnp.bfloat16: 2.0**-7, jnp.float16: 2.0**-9}
FACTOR = {"auto": 1.5, "structured": 1.5, "jacobian": 1.5, "ntvp": 6.0}


def _mlp(key, d_in=8, width=32, c=3):
    ks = jax.random.split(key, 6)
    p = {
        "W1": jax.random.normal(ks[0], (d_in, width)) / np.sqrt(d_in),
        "b1": 0.1 * jax.random.normal(ks[1], (width,)),
        "W2": jax.random.normal(ks[2], (width, width)) / np.sqrt(width),
        "b2": 0.1 * jax.random.normal(ks[3], (width,)),
        "W3": jax.random.normal(ks[4], (width, c)) / np.sqrt(width),
        "b3": 0.1 * jax.random.normal(ks[5], (c,)),
    }

    def f(p, x):
        h = jnp.tanh(x @ p["W1"] + p["b1"][None, :])
        h = jnp.tanh(h @ p["W2"] + p["b2"][None, :])
        return h @ p["W3"] + p["b3"][None, :]

    return f, p, jax.random.normal(jax.random.key(11), (9, d_in))


def _cnn(key, c=4):
    ks = jax.random.split(key, 4)
    p = {
        "k1": jax.random.normal(ks[0], (3, 3, 3, 6)) / np.sqrt(27),
        "k2": jax.random.normal(ks[1], (3, 3, 6, 6)) / np.sqrt(54),
        "W": jax.random.normal(ks[2], (4 * 4 * 6, c)) / np.sqrt(96),
        "b": 0.1 * jax.random.normal(ks[3], (c,)),
    }

    def f(p, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME", dimension_numbers=DN))
        h = jnp.tanh(jax.lax.conv_general_dilated(h, p["k2"], (2, 2), "SAME", dimension_numbers=DN))
        return h.reshape(h.shape[0], -1) @ p["W"] + p["b"][None, :]

    return f, p, jax.random.normal(jax.random.key(12), (6, 8, 8, 3))


def _oracle(f, params, x, own_dtype=False):
    """float64 kernels of the model at ``params`` (any dtype, cast exactly to float64) on ``x``: naive Jacobians.
    ``own_dtype``: the Jacobian in the parameters' own dtype instead (the baseline), still contracted in float64."""
    flat, unravel = ravel_pytree(params if own_dtype else _cast(params, jnp.float64))
    x = jnp.asarray(x) if own_dtype else jnp.asarray(x, jnp.float64)
    jac = jax.jit(jax.vmap(jax.jacrev(lambda v, xi: f(unravel(v), xi[None])[0]), (None, 0)))(flat, x)
    j = np.asarray(jac, np.float64)  # (N, C, P)
    k0 = np.einsum("icp,jcp->ij", j, j)
    d = np.diag(k0)
    g = j.sum(1)
    return dict(
        full=np.einsum("icp,jdp->ijcd", j, j), trntk0=k0, trntk=k0 / np.sqrt(np.outer(d, d)), pntk=g @ g.T / j.shape[1]
    )


def _cast(tree, dt):
    return jax.tree_util.tree_map(lambda l: l.astype(dt), tree)


def _rel(k, o):
    return float(np.abs(np.asarray(k, np.float64) - o).max() / np.abs(o).max())


# ------------------------------------------------------------------------------------------------------------------
# the policy: resolution, validation, cache key
# ------------------------------------------------------------------------------------------------------------------
def test_policy_resolution_and_validation():
    assert resolve_precision() == "highest"
    with jc.ntk.precision("high") as p:
        assert p == "high" and resolve_precision() == "high"
        with jc.ntk.precision("default"):
            assert resolve_precision() == "default"
            assert resolve_precision("highest") == "highest"  # an explicit value wins over the context
        assert resolve_precision() == "high"
    assert resolve_precision() == "highest"
    with pytest.raises(ValueError, match="precision must be one of 'highest', 'high', 'default'"):
        with jc.ntk.precision("tf32"):
            pass
    f, p, x = _mlp(jax.random.key(0))
    for factory in (jc.trace_ntk, jc.empirical_ntk, jc.pseudo_ntk, jc.conjugate_kernel, jc.embedding_kernel):
        with pytest.raises(ValueError, match="precision must be one of"):
            factory(f, precision="HIGHEST")
    assert dict(jc.trace_ntk(f, precision="high").spec.options)["precision"] == "high"


def test_jit_cache_respects_policy():
    """Each policy compiles its own function (the model is traced again), the highest-precision result is unchanged
    after a "high" call, and the compiled code carries the policy on the model's and the kernel's products."""
    f0, p, x = _mlp(jax.random.key(0))
    p, x = _cast(p, jnp.float32), x.astype(jnp.float32)
    traces = []

    def f(params, xx):
        traces.append(1)
        return f0(params, xx)

    k = jc.trace_ntk(f, normalize=False, implementation="jacobian")
    k_high = jc.trace_ntk(f, normalize=False, implementation="jacobian", precision="high")
    r1 = np.asarray(k(p, x))
    n1 = len(traces)
    r1b = np.asarray(k(p, x))
    assert len(traces) == n1  # cached
    with jc.ntk.precision("high"):
        r2 = np.asarray(k(p, x))
    n2 = len(traces)
    assert n2 > n1  # another policy: compiled again, not served from the "highest" cache entry
    np.testing.assert_array_equal(np.asarray(k_high(p, x)), r2)
    assert len(traces) == n2  # the factory's precision="high" shares the context's compiled function
    np.testing.assert_array_equal(np.asarray(k(p, x)), r1)  # back to "highest": cached, unchanged
    np.testing.assert_array_equal(r1, r1b)
    assert len(traces) == n2
    if jax.default_backend() == "cpu":  # float32 products are exact float32 products on CPU whatever the setting
        np.testing.assert_array_equal(r2, r1)
    else:  # TF32 / bf16x3: ~1e-3 relative
        np.testing.assert_allclose(r2, r1, rtol=2e-2, atol=2e-2 * np.abs(r1).max())

    from jaxcompare.ntk._kernels import _compute_jit

    def hlo(policy):
        kw = dict(apply_fn=f, mode="trace", impl_name="jacobian", with_norm=False, precision=policy)
        return _compute_jit.lower(p, x, None, None, **kw).as_text()

    high, highest = hlo("high"), hlo("highest")
    assert "precision = [HIGH, HIGH]" in high and "HIGHEST" not in high
    assert "precision = [HIGHEST, HIGHEST]" in highest and "[HIGH, HIGH]" not in highest


def test_project_gradients_precision_policy(tmp_path):
    """``project_gradients(precision=...)``: validated; the policy reaches the compiled code (the model's products
    re-evaluated by the structured sketch carry it); on CPU the features are identical under every policy; a store
    on disk made under one policy is not resumed under another."""
    f, p, x = _mlp(jax.random.key(0))
    p, x = _cast(p, jnp.float32), x.astype(jnp.float32)
    proj = jc.structured_projection(jax.random.key(1), 16)
    with pytest.raises(ValueError, match="precision must be one of"):
        jc.project_gradients(f, p, x, proj, precision="tf32")
    from jaxcompare.ntk._project_gradients import _features_jit

    def hlo(policy):
        return _features_jit.lower(proj, p, x, apply_fn=f, summed=False, precision=policy).as_text()

    high, highest = hlo("high"), hlo("highest")
    assert "precision = [HIGH, HIGH]" in high and "HIGHEST" not in high
    assert "precision = [HIGHEST, HIGHEST]" in highest and "[HIGH, HIGH]" not in highest
    ref = np.asarray(jc.project_gradients(f, p, x, proj))
    with jc.ntk.precision("high"):  # the context, when precision= is not given
        ctx = np.asarray(jc.project_gradients(f, p, x, proj))
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(ctx, ref)
        np.testing.assert_array_equal(np.asarray(jc.project_gradients(f, p, x, proj, precision="default")), ref)
    jc.project_gradients(f, p, x, proj, path=tmp_path)
    with pytest.raises(ValueError, match="fingerprint"):
        jc.project_gradients(f, p, x, proj, path=tmp_path, precision="high")


# ------------------------------------------------------------------------------------------------------------------
# bfloat16 / float16 models: float32 accumulation, float32 kernels, every implementation
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,dt",
    [("mlp", jnp.bfloat16), ("mlp", jnp.float16), ("cnn", jnp.bfloat16)],
    ids=["mlp-bf16", "mlp-f16", "cnn-bf16"],
)
def test_low_precision_float32_kernels_near_oracle(model, dt):
    f, p, x = (_mlp if model == "mlp" else _cnn)(jax.random.key(0))
    p, x = _cast(p, dt), x.astype(dt)
    o, b = _oracle(f, p, x), _oracle(f, p, x, own_dtype=True)

    def check(got, name, impl):
        err, base = _rel(got, o[name]), _rel(b[name], o[name])
        assert got.dtype == jnp.float32, (name, impl)
        assert err <= FACTOR[impl] * base + 1e-6 and err < TOL[dt], (name, impl, err, base)

    impls = {"mlp-bfloat16": IMPLS, "mlp-float16": ["auto", "ntvp"]}.get(f"{model}-{jnp.dtype(dt).name}", ["auto"])
    for impl in impls:  # the normalized kernel runs the kernel and its diagonal
        check(jc.trace_ntk(f, implementation=impl)(p, x), "trntk", impl)
    check(jc.trace_ntk(f, normalize=False)(p, x), "trntk0", "auto")
    check(jc.empirical_ntk(f, implementation="jacobian")(p, x), "full", "jacobian")
    pimpl = "ntvp" if model == "mlp" else "auto"
    check(jc.pseudo_ntk(f, implementation=pimpl)(p, x), "pntk", pimpl)


def test_mixed_precision_dtype_agrees_across_implementations():
    """bfloat16 weights, float32 biases: one float32 kernel from every implementation and the projected path."""
    f, p, x = _mlp(jax.random.key(1))
    p = {k: v.astype(jnp.bfloat16 if k.startswith("W") else jnp.float32) for k, v in p.items()}
    x = x.astype(jnp.float32)
    o = _oracle(f, p, x)
    for impl in IMPLS:
        k = jc.trace_ntk(f, normalize=False, implementation=impl)(p, x)
        assert k.dtype == jnp.float32, impl
        assert _rel(k, o["trntk0"]) < TOL[jnp.bfloat16], impl
    assert jc.trace_ntk(f).spec.diag(p, x).dtype == jnp.float32
    proj = jc.random_projection(jax.random.key(2), 64)
    assert jc.trace_ntk(f, projection=proj)(p, x).dtype == jnp.float32
    feats = jc.conjugate_kernel(lambda q, xx: jnp.tanh(xx @ q["W1"]))(p, x.astype(jnp.bfloat16))
    assert feats.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------------------------
# float16 overflow: accumulated in float32 when only the kernel overflows; a clear error when gradients do
# ------------------------------------------------------------------------------------------------------------------
def _wide(scale_x, w1, w2, d=64, width=16, c=4):
    """f(x) = tanh(x W1) W2 with ``x`` of size ``scale_x``: gradients of W1 ~ scale_x * |W2| (finite in float16)
    while <g(x), g(x)> ~ d scale_x² · width |W2|² overflows float16 (max 65504)."""
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    p = {"W1": w1 * jax.random.normal(k1, (d, width)), "W2": w2 * jax.random.normal(k2, (width, c))}
    x = scale_x * jax.random.normal(k3, (5, d))

    def f(q, xx):
        return jnp.tanh(xx @ q["W1"]) @ q["W2"]

    return f, _cast(p, jnp.float16), x.astype(jnp.float16)


@pytest.mark.parametrize("impl", ["auto", "jacobian"])
def test_float16_kernel_overflow_accumulates_in_float32(impl):
    f, p, x = _wide(30.0, 1e-3, 1.0)
    o = _oracle(f, p, x)
    assert np.abs(o["trntk0"]).max() > 4 * 65504  # the kernel does not fit in float16...
    fl = jax.tree_util.tree_leaves(jax.vmap(jax.jacrev(lambda q, xi: f(q, xi[None])[0]), (None, 0))(p, x))
    assert all(bool(jnp.isfinite(g).all()) for g in fl)  # ...its float16 gradients do
    k = jc.trace_ntk(f, normalize=False, implementation=impl)(p, x)
    assert k.dtype == jnp.float32 and bool(jnp.isfinite(k).all())
    assert _rel(k, o["trntk0"]) < TOL[jnp.float16]
    assert _rel(jc.trace_ntk(f, implementation=impl)(p, x), o["trntk"]) < TOL[jnp.float16]


def test_float16_ntvp_kernel_overflow_raises():
    f, p, x = _wide(30.0, 1e-3, 1.0)
    # the NTK-vector products form each kernel entry in the model's float16: they overflow, and say so
    with pytest.raises(FloatingPointError, match="float16.*'ntvp'.*float32 or bfloat16"):
        jc.trace_ntk(f, normalize=False, implementation="ntvp")(p, x)


def _deep(d=16, width=8, c=3):
    """f(x) = tanh(tanh(x W1) W2) W3 with |W2|, |W3| ~ 300: the output sensitivity of the first layer (and so its
    gradient, ~ 300² · width) overflows float16 while params, inputs and logits are finite."""
    ks = jax.random.split(jax.random.key(6), 4)
    p = {
        "W1": 1e-5 * jax.random.normal(ks[0], (d, width)),
        "W2": 300 * jax.random.normal(ks[1], (width, width)),
        "W3": 300 * jax.random.normal(ks[2], (width, c)),
    }
    x = jax.random.normal(ks[3], (4, d))

    def f(q, xx):
        return jnp.tanh(jnp.tanh(xx @ q["W1"]) @ q["W2"]) @ q["W3"]

    return f, _cast(p, jnp.float16), x.astype(jnp.float16)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_gradient_overflow_raises(impl):
    f, p, x = _deep()
    assert bool(jnp.isfinite(f(p, x)).all())
    with pytest.raises(FloatingPointError, match="float16 model is not finite.*loss scaling"):
        jc.trace_ntk(f, implementation=impl)(p, x)
    if impl == "auto":
        with pytest.raises(FloatingPointError, match="float16 model is not finite"):
            jc.pseudo_ntk(f, implementation=impl)(p, x)


def test_float16_overflow_under_jit_and_features():
    f, p, x = _deep()
    k = jax.jit(jc.trace_ntk(f, normalize=False, implementation="jacobian"))
    with pytest.raises(Exception, match="float16 model is not finite"):  # jax's runtime error wrapping the message
        k(p, x).block_until_ready()
    fs, ps, xs = _wide(30.0, 1e-3, 1.0)  # the finite case passes under jit
    assert bool(jnp.isfinite(jax.jit(jc.trace_ntk(fs, normalize=False, implementation="jacobian"))(ps, xs)).all())
    # feature kernels: float16 features ~ 300 (finite), <phi, phi> ~ 5.8e6 accumulated in float32
    xf = (300 * jax.random.normal(jax.random.key(3), (4, 64))).astype(jnp.float16)
    ck = jc.conjugate_kernel(lambda q, xx: xx)(None, xf)
    x64 = np.asarray(xf, np.float64)
    assert ck.dtype == jnp.float32 and _rel(ck, x64 @ x64.T) < 1e-6
    with pytest.raises(FloatingPointError, match="float16 features overflowed"):
        jc.conjugate_kernel(lambda q, xx: xx * jnp.float16(1000))(None, xf)


def _conv_scan_model():
    def conv(x, w, s):
        return jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def apply_fn(q, xx):
        h = jax.nn.relu(conv(xx, q["c1"], 1))
        h = jnp.mean(jax.nn.relu(conv(h, q["c2"], 2)), axis=(1, 2))
        h = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), h, q["mid"])[0]  # layers in a scan
        return h @ q["out"]

    k = jax.random.split(jax.random.key(3), 5)
    shapes = {"c1": (3, 3, 3, 4), "c2": (3, 3, 4, 6), "mid": (2, 6, 6), "out": (6, 3)}
    q = {n: 0.5 * jax.random.normal(kk, s) for kk, (n, s) in zip(k, shapes.items())}
    return apply_fn, q, jax.random.normal(k[4], (9, 8, 8, 3))


@pytest.mark.parametrize("policy", ["high", "highest"])
def test_structured_engine_programs_carry_the_policy(tmp_path, policy):
    """The default (structured, blocked) engine re-evaluates the model from a jaxpr captured once, outside any
    policy; every product and convolution of the programs it compiles — the model's own, forward and backward, in
    a scan too, and the kernel's contractions — carries the policy (read from the lowered modules JAX writes with
    ``jax_dump_ir_to``). Fails when the programs are not traced under the policy."""
    import re

    f, q, x = _conv_scan_model()
    q, x = _cast(q, jnp.float32), x.astype(jnp.float32)
    old = jax.config.values["jax_dump_ir_to"]
    jax.config.update("jax_dump_ir_to", str(tmp_path))
    try:
        k = jc.trace_ntk(f, precision=policy, implementation="structured")(q, x)
    finally:
        jax.config.update("jax_dump_ir_to", old)
    want = policy.upper()
    seen = []
    for path in tmp_path.glob("*.mlir"):
        for line in path.read_text().splitlines():
            m = re.search(r"stablehlo\.(dot_general|convolution)", line)
            if m:
                p = re.search(r"precision(?:_config)? = \[(?:#stablehlo<precision )?(\w+)", line)
                seen.append((m.group(1), p.group(1) if p else None))
    assert sum(kind == "convolution" for kind, _ in seen) >= 1 and sum(kind == "dot_general" for kind, _ in seen) >= 5
    assert {p for _, p in seen} == {want}, seen
    assert np.all(np.isfinite(np.asarray(k)))
