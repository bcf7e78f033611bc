"""implementation="structured": the jaxpr analysis (which leaves are structured, which fall back) and agreement with
the independent float64 forward-mode Jacobian oracle on models beyond the shared conformance suite (token models,
parameter-on-the-left products, NCHW dilated convolutions, inner jit, relu at exact zeros, LayerNorm, embeddings).
The conformance suite in test_ntk.py runs every test there against "structured" too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import flax_cnn, mlp, oracle_jacobian, oracle_kernels, shared_weight

import jaxcompare as jc
from jaxcompare.ntk import _structured as S
from jaxcompare.ntk._implementations import choose_auto
from jaxcompare.ntk._structured import _blocks as B
from jaxcompare.ntk._structured import _layouts as L
from jaxcompare.ntk._structured import _patches as P

TOL64 = dict(rtol=1e-10, atol=1e-10)


def _normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _kernels(j1, j2):
    """full / trNTK⁰ / normalized trNTK / pNTK from float64 Jacobians ``(N, C, P)`` (the contractions of
    ``ntk_models.oracle_kernels``)."""
    k0 = np.einsum("icp,jcp->ij", j1, j2)
    d1, d2 = np.einsum("icp,icp->i", j1, j1), np.einsum("icp,icp->i", j2, j2)
    g1, g2 = j1.sum(1), j2.sum(1)
    return dict(
        full=np.einsum("icp,jdp->ijcd", j1, j2),
        trntk0=k0,
        trntk=k0 / np.sqrt(np.outer(d1, d2)),
        pntk=g1 @ g2.T / j1.shape[1],
    )


_JACS: dict = {}


def _jacobians(name, f, p, *xs):
    """The float64 forward-mode oracle Jacobians (``ntk_models.oracle_jacobian``) of each of ``xs``, from one
    compiled program over their concatenation, kept under ``name`` for the other tests of the same model and inputs
    (compiling the oracle costs more than running it); the inputs are checked to be the ones kept."""
    xs = [np.asarray(x) for x in xs]
    hit = _JACS.get(name)
    if hit is None or len(hit[0]) != len(xs) or not all(np.array_equal(a, b) for a, b in zip(hit[0], xs)):
        j = oracle_jacobian(f, p, np.concatenate(xs))
        cuts = np.cumsum([len(x) for x in xs])[:-1]
        hit = _JACS[name] = (xs, np.split(j, cuts))
    return hit[1]


def _oracle(name, f, p, x1, x2):
    """Oracle kernels ``(x1, x1)`` and ``(x1, x2)`` (see :func:`_jacobians`)."""
    j1, j2 = _jacobians(name, f, p, x1, x2)
    return _kernels(j1, j1), _kernels(j1, j2)


def _check_against_oracle(f, p, x1, x2, o=None):
    """The three structured code paths (full, trace, pseudo); normalization is shared code tested in test_ntk
    (``o``: the oracle's kernels of ``(x1, x2)`` when already computed)."""
    o = oracle_kernels(f, p, x1, x2) if o is None else o
    kw = dict(implementation="structured")
    np.testing.assert_allclose(jc.empirical_ntk(f, **kw)(p, x1, x2), o["full"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, **kw)(p, x1, x2), o["trntk0"], **TOL64)
    np.testing.assert_allclose(jc.pseudo_ntk(f, **kw)(p, x1, x2), o["pntk"], **TOL64)


def _forced(kind):
    """A ``choose_kinds`` that puts every layer with several positions in layout ``kind`` (``pos`` only where it
    exists: not for the full class blocks)."""

    def choose(uses, c, full, tile_rows, allow_lazy, embed=(), geo=(), long_lazy=False):
        return tuple(("grad" if kind == "pos" and full else kind) if t > 1 else "pos" for t, _, _ in uses)

    return choose


def _plan(f, p, x):
    plan = S.analyze(f, p, tuple(x.shape[1:]), x.dtype)
    return [(u.kind, u.leaf, u.bias, u.n_positions) for u in plan.uses], plan.fallback


def test_analysis_classifies_leaves():
    # MLP: leaves sorted W1, W2, b1, b2 -> both weights structured with their biases fused, nothing falls back
    f, p = mlp(jax.random.key(0))
    assert _plan(f, p, jnp.ones((2, 5))) == ([("dot", 0, 2, 1), ("dot", 1, 3, 1)], ())
    # leaves V, W: the shared W (leaf 1) is used twice -> per-example fallback; V structured
    f, p = shared_weight(jax.random.key(0))
    assert _plan(f, p, jnp.ones((2, 6))) == ([("dot", 0, None, 1)], (1,))
    # flax CNN: two convolutions (36 and 9 output positions) and a dense layer, all with fused biases
    f, p = flax_cnn(jax.random.key(0))
    uses, fb = _plan(f, p, jnp.ones((2, 6, 6, 2)))
    assert [(k, t) for k, _, b, t in uses] == [("conv", 36), ("conv", 9), ("dot", 1)]
    assert all(b is not None for _, _, b, _ in uses) and fb == ()


def test_applies_and_auto_choice():
    f, p = mlp(jax.random.key(0))
    x = jnp.ones((3, 5))
    assert S.applies(f, p, x)[0]
    assert choose_auto(f, p, x, None, 3) == "structured"
    # no dot_general/conv with a parameter: not applicable, auto keeps the generic implementations
    g = lambda q, x: jnp.tanh(x[:, :2] * q["a"][None, :]) + q["b"][None, :]  # noqa: E731
    q = {"a": jnp.ones(2), "b": jnp.zeros(2)}
    assert not S.applies(g, q, x)[0]
    assert choose_auto(g, q, x, None, 2) != "structured"
    # explicitly requested it still works (everything by the per-example fallback)
    np.testing.assert_allclose(
        jc.trace_ntk(g, normalize=False, implementation="structured")(q, x[:2], x),
        oracle_kernels(g, q, x[:2], x)["trntk0"],
        **TOL64,
    )


def test_token_model_param_on_both_sides_and_inner_jit():
    """Positions T > 1 (tokens), the parameter as left operand of a dot_general, a jit call inside the model."""
    p = {
        "E": _normal(0, (4, 6), 0.5),
        "Wl": _normal(1, (5, 6), 0.4),
        "c": _normal(2, (5,), 0.1),
        "O": _normal(3, (5, 3), 0.4),
    }

    @jax.jit
    def mix(h, w):
        return jnp.einsum("ed,btd->bte", w, h)  # parameter on the left

    def f(q, x):  # x: (N, T=3, 4)
        h = jnp.tanh(jnp.einsum("btd,de->bte", x, q["E"]))  # (N, 3, 6)
        h = jnp.tanh(mix(h, q["Wl"]) + q["c"][None, None, :])  # (N, 3, 5)
        return jnp.einsum("bte,ec->bc", h, q["O"])  # contracts tokens too

    x1, x2 = _normal(4, (5, 3, 4)), _normal(5, (3, 3, 4))
    # leaves E, O, Wl, c: E and Wl on 3 token positions (c fused with Wl), O on the token sum
    assert _plan(f, p, x1) == ([("dot", 0, None, 3), ("dot", 2, 3, 3), ("dot", 1, None, 1)], ())
    _check_against_oracle(f, p, x1, x2)


@pytest.mark.parametrize("kind", ["grad", "pos", "lazy"])
def test_positions_gram_and_materialized_paths_agree(monkeypatch, kind):
    """Every layout of a layer with T > 1 (per-example gradients, Gram of positions, factors re-formed per tile)
    matches the oracle (full mode has no Gram-of-positions form for T > 1: per-example gradients there)."""
    monkeypatch.setattr(L, "choose_kinds", _forced(kind))
    p = {"E": _normal(0, (4, 2), 0.5), "O": _normal(1, (2, 3), 0.4)}

    def f(q, x):  # T = 7 positions, D = 4 > E = 2: the Gram path is cheaper when allowed
        return jnp.sum(jnp.tanh(jnp.einsum("btd,de->bte", x, q["E"])), axis=1) @ q["O"]

    x1, x2 = _normal(2, (4, 7, 4)), _normal(3, (3, 7, 4))
    _check_against_oracle(f, p, x1, x2, _oracle("positions", f, p, x1, x2)[1])  # one oracle for the three layouts


@pytest.mark.slow
def test_nchw_dilated_strided_conv_and_relu_at_exact_zeros():
    """Explicit lax.conv_general_dilated with NCHW/OIHW layout, stride, dilation and padding; zero pixels make
    relu see exact zeros (its custom derivative rule, 0 at 0, must be kept)."""
    p = {"K": _normal(0, (3, 2, 3, 3), 0.5), "V": _normal(1, (3 * 4 * 2, 4), 0.3)}

    def f(q, x):  # x: (N, 2, 7, 7)
        h = jax.lax.conv_general_dilated(
            x, q["K"], (2, 2), ((1, 2), (0, 1)), rhs_dilation=(1, 2), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        h = jax.nn.relu(h)
        return h.reshape(h.shape[0], -1) @ q["V"]

    x1 = _normal(2, (4, 2, 7, 7)).at[:, :, :3, :].set(0.0)
    x2 = _normal(3, (3, 2, 7, 7))
    assert jax.eval_shape(f, p, x1).shape == (4, 4)
    uses, fb = _plan(f, p, x1)
    assert [k for k, _, _, _ in uses] == ["conv", "dot"] and fb == ()
    _check_against_oracle(f, p, x1, x2)


@pytest.mark.slow
def test_layernorm_embedding_and_custom_jvp_parameters_fall_back():
    """Leaves used outside dot/conv (LayerNorm scale, an embedding gather, a parameter inside a custom_jvp
    function) are handled per example in the same pass."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            e = nn.Embed(7, 5, param_dtype=jnp.float64)(tokens)  # gather on a parameter
            h = nn.LayerNorm(param_dtype=jnp.float64)(nn.Dense(6, param_dtype=jnp.float64)(e))
            s = self.param("s", nn.initializers.normal(1.0), (6,), jnp.float64)
            h = jnp.tanh(h) * jax.nn.softplus(s)[None, None, :]  # softplus: parameter through custom_jvp
            return nn.Dense(3, param_dtype=jnp.float64)(h.sum(1))

    model = Net()
    tokens = jnp.array([[1, 2, 3], [4, 5, 6], [0, 0, 1], [6, 2, 2]])
    v = model.init(jax.random.key(0), tokens)
    f, p = jc.from_linen(model, v)
    uses, fb = _plan(f, p, tokens)
    assert len(uses) == 2 and len(fb) == 4  # Dense_0, Dense_1 structured; Embed, LayerNorm scale/bias, s
    ref = jc.trace_ntk(f, normalize=False, implementation="jacobian")(p, tokens, tokens[:2])
    np.testing.assert_allclose(
        jc.trace_ntk(f, normalize=False, implementation="structured")(p, tokens, tokens[:2]),
        ref,
        rtol=1e-10,
        atol=1e-10,
    )
    ref_full = jc.empirical_ntk(f, implementation="jacobian")(p, tokens)
    np.testing.assert_allclose(
        jc.empirical_ntk(f, implementation="structured")(p, tokens), ref_full, rtol=1e-10, atol=1e-10
    )


def test_bias_not_fused_when_broadcast_is_partial():
    """A 'bias' broadcast over only part of the positions must not be treated as a constant input feature."""
    p = {"W": _normal(0, (4, 3), 0.5), "b": _normal(1, (2, 3), 0.5)}

    def f(q, x):  # x: (N, 2, 4); b differs per position -> its gradient is per position, not Σ_t δ_t
        return jnp.sum(jnp.tanh(jnp.einsum("btd,de->bte", x, q["W"]) + q["b"][None]), axis=1)

    x = _normal(2, (4, 2, 4))
    uses, fb = _plan(f, p, x)
    assert uses[0][2] is None and fb == (1,)
    _check_against_oracle(f, p, x, x[:3])


def test_elementwise_scales_and_shifts_against_oracle():
    """A leaf broadcast over positions and multiplied into (a norm's γ) or added to (its β) an activation gets its
    per-example gradient as a sum over positions of the recorded activation times the sensitivity: the
    classification of each pattern, then the per-example gradients and every kernel against oracles. Patterns: a
    fused scale and shift, a shift alone spread over positions × features, a scalar scale with the leaf on the left,
    leaves whose entries reach the features permuted (transposed before their reshape), a scale along the positions
    axis followed by a shift along the features (not fused: a shift alone), a scale of an activation that the mul
    itself broadcasts (flax's LayerNorm: ``rsqrt(var) · γ``), a scale of the model's output."""
    p = {
        "W": _normal(0, (4, 6), 0.5),
        "g": 1 + _normal(1, (6,), 0.3),
        "b": _normal(2, (6,), 0.3),
        "P": _normal(3, (5, 6), 0.3),
        "t": 1 + _normal(4, (), 0.3),
        "q": 1 + _normal(5, (2, 3), 0.3),
        "r": 1 + _normal(6, (5,), 0.3),
        "c": _normal(7, (2, 3), 0.3),
        "V": _normal(8, (6, 3), 0.5),
        "o": 1 + _normal(9, (3,), 0.3),
        "k": _normal(11, (6,), 0.3),
    }

    def f(q, x):  # x: (N, 5, 4)
        h = jnp.einsum("ntd,de->nte", x, q["W"])
        h = h * q["g"][None, None, :] + q["b"][None, None, :]
        h = jnp.tanh(h) + q["P"][None]
        h = q["t"] * h
        h = jnp.transpose(q["q"]).reshape(6)[None, None, :] * jnp.sin(h)
        h = h * q["r"][None, :, None] + jnp.transpose(q["c"]).reshape(6)[None, None, :]
        # a (N, 5, 1) activation broadcast by the mul itself, as flax's LayerNorm's rsqrt(var)
        h = h + jnp.cos(h).mean(-1, keepdims=True) * q["k"][None, None, :]
        return (jnp.tanh(h).mean(1) @ q["V"]) * q["o"][None, :]

    x = _normal(10, (4, 5, 4))
    plan = S.analyze(f, p, (5, 4), x.dtype)
    names = sorted(p)
    got = {
        (names[s.scale] if s.scale is not None else None, names[s.shift] if s.shift is not None else None)
        for s in plan.scales
    }
    want = {("g", "b"), (None, "P"), ("t", None), ("q", None), ("r", None), (None, "c"), ("k", None), ("o", None)}
    assert got == want
    assert {names[s.scale]: s.n_positions for s in plan.scales if s.scale is not None} == dict(
        g=5, t=30, q=5, r=6, k=5, o=1
    )
    assert sorted(names[l] for l in plan.fallback) == sorted(set(names) - {"W", "V"})  # per-example gradients
    assert all(r.startswith("structured") for r in plan.reasons)
    # the per-example gradients in each leaf's own entry order (a kernel cannot tell a permuted order)
    # each side one compiled program (eagerly every op of the vmapped autodiff compiles on its own)
    _, _, j = jax.jit(lambda q, xx: S.factors(plan, q, xx, summed=False))(p, x[:2])
    jac = jax.jit(lambda q, xx: jax.vmap(lambda xi: jax.jacrev(lambda r: f(r, xi[None])[0])(q))(xx))(p, x[:2])
    for l, jm in zip(plan.fallback, j):
        np.testing.assert_allclose(jm, np.asarray(jac[names[l]]).reshape(jm.shape), **TOL64)
    _check_against_oracle(f, p, x, x[:3])


@pytest.mark.slow
def test_structured_batched_and_float32_cnn():
    f, p = flax_cnn(jax.random.key(0), dtype=jnp.float32)
    x = _normal(1, (5, 6, 6, 2)).astype(jnp.float32)
    k = jc.trace_ntk(f, implementation="structured")
    a = k(p, x)
    assert a.dtype == jnp.float32
    ref = jc.trace_ntk(f, implementation="jacobian")(p, x)
    np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jc.batched(k, 2, progress_bar=False)(p, x), a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_symmetric_tiling_path(monkeypatch):
    """Traced kernels with x2 = None: large N is contracted in mirrored tiles of the stored features; forced here
    at tiny N with 2-row tiles (eager calls run on the blocked engine instead, tested below)."""
    monkeypatch.setattr(L, "_SYM_TILE", 2)
    f, p = mlp(jax.random.key(0))
    x = _normal(1, (7, 5))
    o = oracle_kernels(f, p, x, x)
    k = jax.jit(jc.trace_ntk(f, normalize=False, implementation="structured"))(p, x)  # traced: not the engine
    np.testing.assert_allclose(k, o["trntk0"], **TOL64)
    np.testing.assert_allclose(jax.jit(jc.pseudo_ntk(f, implementation="structured"))(p, x), o["pntk"], **TOL64)
    q = {"K": _normal(2, (3, 3, 2, 3), 0.5), "V": _normal(3, (27, 2), 0.3)}

    def g(q, x):  # a conv layer (9 positions) and a dense layer
        h = jax.lax.conv_general_dilated(x, q["K"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h).reshape(h.shape[0], -1) @ q["V"]

    xc = _normal(4, (6, 6, 6, 2))
    np.testing.assert_allclose(
        jax.jit(jc.trace_ntk(g, normalize=False, implementation="structured"))(q, xc),
        oracle_kernels(g, q, xc, xc)["trntk0"],
        **TOL64,
    )


@pytest.mark.parametrize(
    "shape, w_shape, strides, padding, rhs_dil, dn",
    [
        ((2, 9, 11, 3), (3, 3, 3, 4), (2, 2), "SAME", (1, 1), ("NHWC", "HWIO", "NHWC")),
        ((2, 10, 10, 3), (3, 2, 3, 4), (2, 3), "VALID", (2, 1), ("NHWC", "HWIO", "NHWC")),
        ((2, 3, 12, 13), (5, 3, 3, 2), (1, 2), ((1, 2), (0, 3)), (1, 2), ("NCHW", "OIHW", "NCHW")),
        ((2, 3, 12, 13), (5, 3, 3, 2), (2, 2), ((-1, 2), (0, 0)), (1, 1), ("NCHW", "OIHW", "NHWC")),
        ((2, 17, 3), (4, 3, 5), (3,), "SAME", (2,), ("NWC", "WIO", "NWC")),
        ((2, 6, 6, 5, 2), (2, 3, 2, 2, 3), (2, 1, 2), "SAME", (1, 1, 1), ("NDHWC", "DHWIO", "NDHWC")),
    ],
)
def test_conv_by_patches_matches_lax_conv_and_its_vjp(shape, w_shape, strides, padding, rhs_dil, dn):
    """The structured pass evaluates convolutions as patches @ filter with a phase-wise transpose ("col2im"); value
    and both cotangents must equal lax.conv_general_dilated's (the independent reference) in float64."""
    x = _normal(0, shape)
    w = _normal(1, w_shape)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=rhs_dil, dimension_numbers=dn)

    params = jax.make_jaxpr(conv)(x, w).jaxpr.eqns[0].params
    assert P.conv_ok(params)
    mine = lambda x, w: P.conv_by_patches(x, w, params)[0]  # noqa: E731
    # both outputs (the product and its patches) differentiated, against autodiff of plain strided slices
    both = lambda x, w: P.conv_by_patches(x, w, params)  # noqa: E731
    y_shape, pat_shape = jax.eval_shape(conv, x, w).shape, jax.eval_shape(both, x, w)[1].shape

    def plain(x, w):
        dn_ = params["dimension_numbers"]
        a = P._padded_input(x, params)
        wk = jnp.transpose(w, tuple(dn_.rhs_spec[2:]) + (dn_.rhs_spec[1], dn_.rhs_spec[0]))
        k = x.ndim - 2
        taps = tuple(int(t) for t in wk.shape[:k])
        p = P._extract_patches.fun(a, taps, tuple(rhs_dil), tuple(strides)).reshape(pat_shape)
        return jnp.einsum("...d,de->...e", p, wk.reshape(-1, wk.shape[-1])), p

    @jax.jit  # every value and cotangent from one compiled program (eager autodiff compiles each op on its own)
    def run(x, w, ct, ct_p):
        y, vjp_ref = jax.vjp(conv, x, w)
        y2, vjp_mine = jax.vjp(mine, x, w)
        (_, pat), vjp_both = jax.vjp(both, x, w)
        (_, p_ref), vjp_plain = jax.vjp(plain, x, w)
        ct_z = jnp.transpose(ct, _out_perm(params["dimension_numbers"].out_spec))
        return y, y2, vjp_mine(ct), vjp_ref(ct), pat, p_ref, vjp_both((ct, ct_p)), vjp_plain((ct_z, ct_p))

    y, y2, ct_mine, ct_ref, pat, p_ref, ct_both, ct_plain = run(x, w, _normal(2, y_shape), _normal(3, pat_shape))
    np.testing.assert_allclose(y2, y, **TOL64)
    for a, b in zip(ct_mine, ct_ref):
        np.testing.assert_allclose(a, b, **TOL64)
    np.testing.assert_allclose(pat, p_ref, rtol=0, atol=0)
    for a, b in zip(ct_both, ct_plain):
        np.testing.assert_allclose(a, b, **TOL64)


def _out_perm(out_spec) -> tuple:
    """Axes of a convolution's output in its out_spec order, as (batch, spatial..., features)."""
    return (out_spec[0],) + tuple(out_spec[2:]) + (out_spec[1],)


def test_transposed_and_1d_convolutions_against_oracle():
    """A transposed convolution (input dilation: evaluated by the primitive, patches from
    conv_general_dilated_patches) feeding a strided 1-D convolution (patch path), with a bias, against the oracle."""
    p = {
        "A": _normal(0, (3, 2, 4), 0.5),
        "B": _normal(1, (2, 4, 3), 0.5),
        "b": _normal(2, (3,), 0.1),
        "V": _normal(3, (3 * 6, 3), 0.3),
    }

    def f(q, x):  # x: (N, 6, 2)
        h = jax.lax.conv_general_dilated(
            x, q["A"], (1,), ((1, 1),), lhs_dilation=(2,), dimension_numbers=("NWC", "WIO", "NWC")
        )  # (N, 11, 4)
        h = jnp.tanh(h)
        h = (
            jax.lax.conv_general_dilated(h, q["B"], (2,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
            + q["b"][None, None, :]
        )
        return jnp.tanh(h).reshape(h.shape[0], -1) @ q["V"]

    x1, x2 = _normal(4, (4, 6, 2)), _normal(5, (3, 6, 2))
    assert jax.eval_shape(f, p, x1).shape == (4, 3)
    plan = S.analyze(f, p, (6, 2), x1.dtype)
    assert [u.kind for u in plan.uses] == ["conv", "conv", "dot"] and plan.fallback == ()
    assert [u.by_patches for u in plan.uses[:2]] == [False, True]
    _check_against_oracle(f, p, x1, x2)


# ------------------------------------------------------------------------------------------------------------------
# Blocked engine (batched on the structured path) and compact per-layer layouts, against the float64 oracle
# ------------------------------------------------------------------------------------------------------------------
def _conv_scale_dense():
    """Two convolutions (36 and 9 positions), a per-channel scale (a norm scale: fallback leaf), a dense head."""
    q = {
        "K1": _normal(1, (3, 3, 2, 2), 0.5),
        "K": _normal(2, (3, 3, 2, 3), 0.5),
        "V": _normal(3, (27, 2), 0.3),
        "s": 1 + _normal(5, (3,), 0.1),
    }

    def g(q, x):
        h = jnp.tanh(
            jax.lax.conv_general_dilated(x, q["K1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )
        h = jax.lax.conv_general_dilated(h, q["K"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h * q["s"][None, None, None, :]).reshape(h.shape[0], -1) @ q["V"]

    return g, q


def _mixed(kinds):
    """A ``choose_kinds`` giving the layers with several positions the layouts ``kinds`` in turn."""

    def choose(uses, c, full, tile_rows, allow_lazy, embed=(), geo=(), long_lazy=False):
        out, i = [], 0
        for t, _, _ in uses:
            k = "pos" if t == 1 else kinds[i % len(kinds)]
            i += t > 1
            out.append("grad" if k == "pos" and full and t > 1 else k)
        return tuple(out)

    return choose


def test_blocked_engine_panels_against_oracle(monkeypatch):
    """batched on the structured path: each block's features once, two blocks resident (panels streamed past
    them), a partial last block; layers in the three layouts at once (factors re-formed per tile, Gram of
    positions, per-example gradients); trace (x2 = None and given), normalized trace, pseudo, full."""
    monkeypatch.setattr(L, "choose_kinds", _mixed(("lazy", "pos")))
    monkeypatch.setattr(B, "_capacity", lambda free, per_block: 3)  # 7 points, blocks of 2: 2 resident + 1 streamed
    calls = []
    features = B.features
    monkeypatch.setattr(B, "features", lambda plan, p, x, *a: calls.append(x.shape[0]) or features(plan, p, x, *a))
    B._JITS.clear()
    g, q = _conv_scale_dense()
    x, x2 = _normal(4, (7, 6, 6, 2)), _normal(6, (5, 6, 6, 2))
    o, o2 = _oracle("scale dense", g, q, x, x2)

    def bat(k, bs=2):
        return jc.batched(k, bs, progress_bar=False)

    k0 = bat(jc.trace_ntk(g, normalize=False))
    np.testing.assert_allclose(k0(q, x), o["trntk0"], **TOL64)
    np.testing.assert_allclose(k0(q, x, x2), o2["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.trace_ntk(g))(q, x), o["trntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.pseudo_ntk(g))(q, x, x2), o2["pntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.empirical_ntk(g), 3)(q, x), o["full"], **TOL64)
    assert set(calls) <= {2, 3}  # traced once per compiled block shape, never per tile
    # inputs smaller than one block are not padded
    calls.clear()
    np.testing.assert_allclose(bat(jc.trace_ntk(g, normalize=False), 64)(q, x), o["trntk0"], **TOL64)
    assert calls == [7]


@pytest.mark.parametrize("slices", ["one", "all"])
def test_panel_lazy_layers_in_slices_of_output_features(monkeypatch, slices):
    """A resident panel forms each block's lazy gradients once per slice of the layer's output features (one
    slice, or one feature per slice); the slices' products sum to the kernel: trace (plain and normalized),
    pseudo and full equal the float64 oracle, with raw and patch inputs."""
    monkeypatch.setattr(L, "choose_kinds", _mixed(("lazy",)))
    seen = []
    pick = (lambda e, whole, room: 1) if slices == "one" else (lambda e, whole, room: e)
    monkeypatch.setattr(B, "_slices", lambda e, whole, room: seen.append(e) or pick(e, whole, room))
    B._JITS.clear()
    g, q = _conv_bias_stack()
    x = _normal(8, (7, 6, 6, 3))
    o = _oracle("bias stack", g, q, x, _normal(6, (3, 6, 6, 3)))[0]
    bat = lambda k, bs=2: jc.batched(k, bs, progress_bar=False)  # noqa: E731
    np.testing.assert_allclose(bat(jc.trace_ntk(g, normalize=False))(q, x), o["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.trace_ntk(g))(q, x), o["trntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.pseudo_ntk(g))(q, x), o["pntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.empirical_ntk(g), 3)(q, x), o["full"], **TOL64)
    assert sorted(set(seen)) == [3, 4]  # both convolutions were lazy and formed in slices


def test_slices_fit_the_room():
    """The fewest slices (a divisor of the output features) whose share fits the room, else one per feature."""
    assert B._slices(64, 100, 100) == 1
    assert B._slices(64, 101, 100) == 2
    assert B._slices(64, 300, 100) == 4  # 3 does not divide 64
    assert B._slices(6, 10**9, 1) == 6


def test_small_blocks_merged_only_when_all_stay_resident(monkeypatch):
    """batched(k, 4) at N = 32 with the engine's block of 128 rows scaled down to 16 (the same rule as
    batched(k, 32) at N = 256, on 8x fewer rows): the engine contracts merged blocks of 16 rows when all of them fit
    the budget, and keeps blocks of 4 when the merged blocks would not all stay resident; both equal the float64
    oracle. Lazy and Gram-of-positions layouts, so the column-by-column tiles of lazy layers run in both."""
    monkeypatch.setattr(B, "ENGINE_BLOCK", 16)
    monkeypatch.setattr(L, "choose_kinds", _mixed(("lazy", "pos")))
    calls = []
    features = B.features
    monkeypatch.setattr(B, "features", lambda plan, p, x, *a: calls.append(x.shape[0]) or features(plan, p, x, *a))
    g, q = _conv_scale_dense()
    x = _normal(7, (32, 6, 6, 2))
    x2s = {n2: _normal(10 + n2, (n2, 6, 6, 2)) for n2 in (31, 17)}
    j, *j2s = _jacobians("merged", g, q, x, *x2s.values())  # one oracle program for the three inputs
    want = _kernels(j, j)["trntk0"]
    k = jc.batched(jc.trace_ntk(g, normalize=False), 4, progress_bar=False)
    B._JITS.clear()
    np.testing.assert_allclose(k(q, x), want, **TOL64)
    assert set(calls) == {16}
    full = jc.batched(jc.empirical_ntk(g), 4, progress_bar=False)
    for (n2, block), j2 in zip(((31, 16), (17, 4)), j2s):  # x2 given, the full kernel; x2 not padded from 17 to 32
        calls.clear()
        np.testing.assert_allclose(full(q, x, x2s[n2]), _kernels(j, j2)["full"], **TOL64)
        assert set(calls) == {block}
    small = 4 * L._setup(g, q, x, 32, 32, True, "trace", 4, 2**31, engine=True).per_point()
    cap = lambda free, per_block: 8 if per_block <= small else 1  # noqa: E731 - 16-row blocks: one at a time
    monkeypatch.setattr(L, "_capacity", cap)
    monkeypatch.setattr(B, "_capacity", cap)
    calls.clear()
    B._JITS.clear()
    np.testing.assert_allclose(k(q, x), want, **TOL64)
    assert set(calls) == {4}


def test_long_row_gram_against_numpy():
    """The Gram of two row blocks summed in steps of columns, a partial last step included, equals NumPy's float64
    product (a dropped or repeated step would be off by a whole slice's contribution)."""
    from jaxcompare.ntk._common import _GRAM_COLS, gram_rows

    p = 2 * _GRAM_COLS + 37
    a, b = np.asarray(_normal(8, (3, p))), np.asarray(_normal(9, (5, p)))
    got = jax.jit(gram_rows)(a, b)
    np.testing.assert_allclose(got, a @ b.T, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(gram_rows(a[:, :100], b[:, :100]), a[:, :100] @ b[:, :100].T, rtol=1e-12)


def test_engine_plans_its_panel_after_measuring_what_compiling_added(monkeypatch):
    """On CPU the engine compiles its programs first, then reads the process's resident memory: what compiling added
    (it stays resident) is taken from the budget before the blocks of features are counted. Simulated: 400 MB
    appear between the two readings; the free memory handed to the capacity rule is 400 MB smaller than without, and
    stays smaller for a second call that compiles nothing (its programs are still resident)."""
    from jaxcompare.ntk import _memory as M

    g, q = _conv_scale_dense()
    x = _normal(4, (7, 6, 6, 2))
    seen = []
    monkeypatch.setattr(B, "_capacity", lambda free, per_block: seen.append(free) or 3)
    want = _oracle("scale dense", g, q, x, _normal(6, (5, 6, 6, 2)))[0]["trntk0"]
    kfn = jc.batched(jc.trace_ntk(g, normalize=False), 2, progress_bar=False, memory_budget="1G")
    for extra, clear in ((0, True), (400 * 2**20, True), (0, False)):  # the last: a second call, nothing compiled
        reads = iter([10**9, 10**9 + extra])
        monkeypatch.setattr(M, "resident_bytes", lambda reads=reads, extra=extra: next(reads, 10**9 + extra))
        if clear:
            B._JITS.clear()
        np.testing.assert_allclose(kfn(q, x), want, **TOL64)
    # compiling's 400 MB are charged to the call that compiled and to the later call that reused the programs
    assert seen[0] - seen[1] == 400 * 2**20 and seen[2] == seen[1]


def test_resident_bytes_reads_this_process():
    """Oracle: ``VmRSS`` of ``/proc/self/status`` (another file of the kernel), read just before and after."""
    from jaxcompare.ntk._memory import release_memory, resident_bytes

    def vmrss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    before, got, after = vmrss(), resident_bytes(), vmrss()
    assert 0.8 * min(before, after) <= got <= 1.2 * max(before, after)
    release_memory()  # glibc's malloc_trim: callable, and never raises


def test_blocked_engine_budget_errors():
    g, q = _conv_scale_dense()
    x = _normal(4, (7, 6, 6, 2))
    with pytest.raises(ValueError, match=r"block_size <= [1-3],"):
        jc.batched(jc.trace_ntk(g), 4, progress_bar=False, memory_budget=20_000)(q, x)
    with pytest.raises(ValueError, match="not even one point per block fits"):
        jc.batched(jc.trace_ntk(g), 4, progress_bar=False, memory_budget=1000)(q, x)
    with pytest.raises(ValueError, match="memory_budget"):
        jc.batched(jc.trace_ntk(g), 4, memory_budget="lots")
    # the budget's units: a fraction in (0, 1] whatever its type, else whole bytes; ambiguous or infinite: refused
    from jaxcompare.ntk._memory import available_bytes, memory_budget

    whole = available_bytes()
    assert all(abs(memory_budget(v) - whole) < 0.05 * whole for v in (1, "1", 1.0))
    assert memory_budget(4096) == memory_budget("4096") == memory_budget("4K") == 4096
    for bad in (1.5, "1.5", float("inf"), "1e400", float("nan"), 0, "0", -2):
        with pytest.raises(ValueError, match="memory_budget"):
            memory_budget(bad)
    # the output alone over the budget: to disk, not a block size that cannot fit either
    with pytest.raises(ValueError, match="kernel_to_disk"):
        jc.batched(jc.trace_ntk(g), 4, progress_bar=False, memory_budget=300)(q, _normal(5, (9, 6, 6, 2)))


def test_layouts_chosen_by_flops_and_memory():
    """Per layer: Gram of positions where it needs no more FLOPs (few positions, many channels), per-example
    gradients otherwise, factors re-formed per tile only when memory is short; the estimate is the stored size."""
    c = 10
    uses = ((1024, 144, 16), (64, 576, 64), (16, 1152, 128), (1, 129, 10))
    assert L.choose_kinds(uses, c, False, 128, False) == ("grad", "grad", "pos", "pos")
    assert L.choose_kinds(uses, c, False, 128, True) == ("grad", "lazy", "pos", "pos")
    assert L.choose_kinds(uses, c, False, 32, True) == ("grad", "grad", "pos", "pos")  # T > rows per block
    # ... unless asked (small blocks: formed in the tile's batched products, not one example at a time)
    assert L.choose_kinds(uses, c, False, 32, True, long_lazy=True) == ("grad", "lazy", "pos", "pos")
    assert L.choose_kinds(uses, c, True, 128, False) == ("grad", "grad", "grad", "pos")  # full: no T > 1 Gram
    kinds = ("grad", "lazy", "pos", "pos")
    assert L.feature_floats(uses, (5,), c, kinds) == (
        c * 5 + c * 144 * 16 + (64 * 576 + c * 64 * 64) + (16 * 1152 + c * 16 * 128) + (129 + c * 10)
    )
    # the per-point estimate equals the bytes of the features the kernel stores
    g, q = _conv_scale_dense()
    x = _normal(4, (6, 6, 6, 2))
    per, fixed = B.estimate(g, q, x, None, "trace")
    plan = S.analyze(g, q, x.shape[1:], x.dtype)
    uses, fb, cc, item, _ = L.dims(plan, q, tuple(x.shape[1:]), x.dtype, False)
    kinds = L.choose_kinds(uses, cc, False, 6, False)
    feats = jax.eval_shape(lambda p, xx: B.features(plan, p, xx, False, kinds, 2), q, x)
    stored = sum(int(np.prod(l.shape)) * l.dtype.itemsize for l in jax.tree_util.tree_leaves(feats))
    assert per * x.shape[0] == stored and fixed > 0


def test_transformer_embedding_attention_norm_against_oracle(monkeypatch):
    """Embedding gather, LayerNorm scale/shift, attention dot_generals with batch dimensions (a per-head weight in
    one of them): the jitted kernel (per-example gradients) and the blocked engine (factors re-formed per tile and
    Gram of positions), against the float64 oracle."""
    from ntk_models import tiny_transformer

    f, p = tiny_transformer(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (5, 3), 0, 7)
    t2 = jax.random.randint(jax.random.key(2), (2, 3), 0, 7)
    o11, o12 = _oracle("transformer", f, p, tokens, t2)  # integer tokens kept as they are
    ref = o11["trntk0"]
    k = jc.trace_ntk(f, normalize=False, implementation="structured")
    np.testing.assert_allclose(k(p, tokens, t2), o12["trntk0"], **TOL64)
    monkeypatch.setattr(L, "choose_kinds", _mixed(("lazy", "pos")))
    np.testing.assert_allclose(jc.batched(k, 2, progress_bar=False)(p, tokens), ref, **TOL64)


# ------------------------------------------------------------------------------------------------------------------
# Embedding lookups (a gather of rows: token equality as the Gram of positions) and chunks of classes
# ------------------------------------------------------------------------------------------------------------------
def _embed_model(lookup: str, n_classes: int = 3):
    """A table of 9 rows read at 5 positions (``lookup``: jnp indexing, ``take`` with ``fill`` (out-of-range rows
    are 0 and get no gradient), ``clip`` (clamped), or a transposed table read by columns), a position table, a
    dense layer over the positions and a head."""
    p = {
        "E": _normal(0, (9, 4), 0.7),
        "pos": _normal(1, (5, 4), 0.3),
        "W": _normal(2, (4, 3), 0.6),
        "V": _normal(3, (15, n_classes), 0.4),
    }
    if lookup == "transposed":
        p["E"] = p["E"].T

    def f(q, tok):
        if lookup == "index":
            h = q["E"][tok]
        elif lookup == "fill":
            h = jnp.take(q["E"], tok, axis=0, mode="fill", fill_value=0.0)
        elif lookup == "clip":
            h = jnp.take(q["E"], tok, axis=0, mode="clip")
        else:
            h = jnp.moveaxis(jnp.take(q["E"], tok, axis=1, mode="clip"), 0, -1)
        h = jnp.tanh(h + q["pos"][None])
        return jnp.tanh(h @ q["W"]).reshape(tok.shape[0], -1) @ q["V"]

    return f, p


_TOK1 = jnp.array([[1, 2, 2, 8, 0], [3, 3, 3, 3, 3], [8, 1, 0, 2, 4], [11, 5, 6, 1, -12]])  # repeats, out of range
_TOK2 = jnp.array([[2, 2, 7, 0, 1], [3, 4, 5, 6, 11]])
_TOK6 = jnp.concatenate([_TOK1, _TOK2[:1] + 1, _TOK1[2:3]], axis=0)  # 6 rows: two blocks of 3


def _embed_oracle(lookup, f, p, n_classes=3):
    """float64 oracle kernels (``ntk_models.oracle_jacobian``, forward mode, integer inputs kept as they are) of
    ``_embed_model(lookup, n_classes)``: ``(_TOK1, _TOK1)``, ``(_TOK1, _TOK2)``, ``(_TOK6, _TOK6)`` (ids modulo 9
    for plain indexing), from one oracle program per model shared by the tests (see :func:`_jacobians`)."""
    t1, t2 = (_TOK1 % 9, _TOK2 % 9) if lookup == "index" else (_TOK1, _TOK2)
    j1, j2, j3 = _jacobians(f"embed {lookup} {n_classes}", f, p, t1, t2, _TOK2[:1] + 1)
    j6 = np.concatenate([j1, j3, j1[2:3]])
    return _kernels(j1, j1), _kernels(j1, j2), _kernels(j6, j6)


def test_embedding_lookup_is_structured_only_for_exact_kernels():
    f, p = _embed_model("index")
    assert [u.kind for u in S.analyze(f, p, (5,), jnp.int32).uses] == ["dot", "dot"]  # the sketches' plan
    plan = S.analyze(f, p, (5,), jnp.int32, embeddings=True)
    emb = [u for u in plan.uses if u.kind == "embed"]
    assert len(emb) == 1 and emb[0].vocab == 9 and emb[0].n_positions == 5 and plan.fallback == (3,)  # pos
    rows = {path: (status, reason) for path, _, status, reason in jc.ntk.explain(f, p, _TOK1[:, :5] % 9).leaves}
    assert rows["['E']"][0] == "structured" and "embedding lookup" in rows["['E']"][1]
    # a tied table (the lookup and the output projection) falls back
    g = lambda q, tok: jnp.mean(jnp.tanh(q["E"][tok]), axis=1) @ q["E"].T  # noqa: E731
    plan = S.analyze(g, {"E": p["E"]}, (5,), jnp.int32, embeddings=True)
    assert plan.uses == () and plan.fallback == (0,)


@pytest.mark.parametrize("lookup", ["index", "fill", "clip", "transposed"])
def test_embedding_rule_against_oracle(lookup):
    """Token equality as the Gram of positions (default layouts), out-of-range ids dropped or clamped as autodiff
    does; full, trace (x2 given and None), pseudo and the normalized trace (diagonal) against the float64 oracle."""
    f, p = _embed_model(lookup)
    t1 = _TOK1 if lookup in ("fill", "clip", "transposed") else _TOK1 % 9
    t2 = _TOK2 if lookup != "index" else _TOK2 % 9
    o11, o, _ = _embed_oracle(lookup, f, p)
    kw = dict(implementation="structured")
    np.testing.assert_allclose(jc.empirical_ntk(f, **kw)(p, t1, t2), o["full"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, **kw)(p, t1, t2), o["trntk0"], **TOL64)
    if lookup != "index":
        return  # the index modes differ only in the ids; the other kernels share the code below
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, **kw)(p, t1), o11["trntk0"], **TOL64)
    np.testing.assert_allclose(jc.pseudo_ntk(f, **kw)(p, t1, t2), o["pntk"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, **kw)(p, t1, t2), o["trntk"], **TOL64)


@pytest.mark.parametrize("kind", ["grad", "pos", "lazy"])
def test_embedding_layouts_on_the_engine(monkeypatch, kind):
    """The embedding as per-example gradients (segment sums), Gram of token equality, or ids re-formed per tile, on
    the blocked engine (blocks of 3: a partial block); trace (x2 None and given), normalized, pseudo, full."""
    monkeypatch.setattr(L, "choose_kinds", _forced(kind))
    B._JITS.clear()
    f, p = _embed_model("clip")
    o11, o, _ = _embed_oracle("clip", f, p)

    def bat(k):
        return jc.batched(k, 3, progress_bar=False)

    np.testing.assert_allclose(bat(jc.trace_ntk(f, normalize=False))(p, _TOK1), o11["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.trace_ntk(f))(p, _TOK1), o11["trntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.trace_ntk(f, normalize=False))(p, _TOK1, _TOK2), o["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.pseudo_ntk(f))(p, _TOK1, _TOK2), o["pntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.empirical_ntk(f))(p, _TOK1, _TOK2), o["full"], **TOL64)


@pytest.mark.parametrize("classes", [1, 2])
def test_class_chunks_against_oracle(monkeypatch, classes):
    """Trace kernels computed a chunk of classes at a time (3 classes in chunks of 1, or of 2 with a padded last
    chunk), summed: the traced kernel (one compiled loop body) and the engine, x2 None and given, normalized."""
    seen = []

    def best(options):
        pick = min(options, key=lambda o: (abs(o.classes - classes), o.flops))
        seen.append(pick.classes)
        return pick

    monkeypatch.setattr(L.PL, "best", best)
    B._JITS.clear()
    f, p = _embed_model("clip")
    o11, o, _ = _embed_oracle("clip", f, p)
    k0 = jc.trace_ntk(f, normalize=False, implementation="structured")
    np.testing.assert_allclose(jax.jit(k0)(p, _TOK1), o11["trntk0"], **TOL64)
    np.testing.assert_allclose(jax.jit(k0)(p, _TOK1, _TOK2), o["trntk0"], **TOL64)
    bat = jc.batched(jc.trace_ntk(f), 3, progress_bar=False)
    np.testing.assert_allclose(bat(p, _TOK1), o11["trntk"], **TOL64)
    np.testing.assert_allclose(bat(p, _TOK1, _TOK2), o["trntk"], **TOL64)
    assert seen and set(seen) == {classes}


@pytest.mark.parametrize("width", [1, 128])
def test_panel_programs_and_inputs_kept_across_class_chunks(monkeypatch, width):
    """Lazy embedding and dense layers on a resident panel of two blocks run as one program per layer (each slice
    of output features formed, then its products: slices of one feature, or whole layers), and with the classes
    taken one at a time the layers' inputs of the first chunk serve the later chunks (whose factor programs leave
    them out): the trace (plain and normalized) equals the float64 oracle; the full kernel too (never chunked)."""
    monkeypatch.setattr(L, "choose_kinds", _forced("lazy"))
    monkeypatch.setattr(L.PL, "best", lambda options: min(options, key=lambda o: (o.classes, o.flops)))
    monkeypatch.setattr(B, "_SLICE_WIDTH", width)
    monkeypatch.setattr(B, "_SLICE_WIDTH_FEW", width)  # 6 rows: a panel of few rows
    programs, inputs = [], []
    panel_lazy, features = B._panel_lazy, B.features

    def spy_panel(a, g, full, vocab, w):
        programs.append((len(a), g[0].shape[3], w))
        return panel_lazy(a, g, full, vocab, w)

    def spy_features(plan, p, x, *a):
        inputs.append(a[6] if len(a) > 6 else True)
        return features(plan, p, x, *a)

    monkeypatch.setattr(B, "_panel_lazy", spy_panel)
    monkeypatch.setattr(B, "features", spy_features)
    B._JITS.clear()
    f, p = _embed_model("clip")
    tok = _TOK6  # 6 rows: two blocks of 3
    o = _embed_oracle("clip", f, p)[2]
    bat = lambda k, bs=3: jc.batched(k, bs, progress_bar=False)  # noqa: E731
    np.testing.assert_allclose(bat(jc.trace_ntk(f, normalize=False))(p, tok), o["trntk0"], **TOL64)
    # the embedding (4 features) and the dense layer (3): slices of `width` features (or whole), two blocks each
    assert sorted(set(programs)) == sorted({(2, 4, min(width, 4)), (2, 3, min(width, 3))})
    # traced (once per program): the factors with the layers' inputs (first chunk), then without (later chunks)
    assert inputs == [True, False]
    np.testing.assert_allclose(bat(jc.trace_ntk(f))(p, tok), o["trntk"], **TOL64)
    programs.clear()
    inputs.clear()
    np.testing.assert_allclose(bat(jc.empirical_ntk(f))(p, tok), o["full"], **TOL64)
    assert programs and all(n == 2 for n, _, _ in programs) and inputs == [True]  # one chunk: inputs computed


def test_tile_room_narrow_slices_only_when_they_keep_every_block():
    """The tile's room is two blocks' whole lazy gradients, unless only the panel's narrow slices (32 features,
    counted twice: the program's copies) leave room for every block of a symmetric kernel to stay resident."""
    assert [L.narrowest_slices(e) for e in (1024, 256, 96, 50, 10, 1)] == [32, 8, 3, 1, 1, 1]
    uses, kinds, geo = ((1, 64, 256),), (L.LAZY,), (None,)
    whole = 8 * 20 * 64 * 256  # float64, two blocks of 10 rows, one class
    sliced = 2 * 8 * 4 * 10 * 64 * 32  # four blocks' slices of 32 features, twice
    assert L._tile_bytes(uses, kinds, 1, 8, 20, True, geo) == whole
    assert L._panel_tile_bytes(uses, kinds, 1, 8, 10, 4, geo) == sliced < whole
    per_block = 100_000

    def room(spare, sym=True, n_blocks=4, kinds=kinds):
        return L.tile_room_bytes(uses, kinds, 1, 8, 10, n_blocks, sym, geo, spare, per_block)

    assert room(whole + 4 * per_block) == whole  # the whole gradients fit beside every block
    assert room(sliced + 4 * per_block) == sliced  # only the slices do
    assert room(sliced + 4 * per_block - 1) == whole  # neither: blocks are streamed, whole gradients per column
    assert room(sliced + 4 * per_block, sym=False) == whole
    assert room(sliced + 4 * per_block, n_blocks=1) == whole
    assert room(sliced + 4 * per_block, kinds=(L.GRAD,)) == L._tile_bytes(uses, (L.GRAD,), 1, 8, 20, True, geo)


def test_plan_made_again_when_compiled_code_leaves_too_little(monkeypatch):
    """A plan that keeps two blocks resident until compiling its programs takes memory (faked here) is made again
    with that much less budget, once: the kernel still equals the float64 oracle, and the model's next call plans
    with the room left for compiled code from the start."""
    import jaxcompare.ntk._memory as mem

    f, p = _embed_model("clip", n_classes=10)
    tok = _TOK6  # two blocks of 3
    want = _embed_oracle("clip", f, p, n_classes=10)[2]["trntk0"]
    budget = 64 * 2**20  # compiled code is counted from 16 MiB on (smaller changes are the heap's)
    first = L._setup(f, p, tok, 6, 6, True, "trace", 3, budget, engine=True).choice
    assert first.classes == 10 and first.fits
    compiled = budget - first.bytes + 1  # beside this much compiled code every class at once no longer fits
    planned, setup = [], B._setup
    monkeypatch.setattr(B, "_setup", lambda *a, **k: planned.append(a[8]) or setup(*a, **k))
    rss = iter([0, compiled] + [compiled] * 8)
    monkeypatch.setattr(mem, "resident_bytes", lambda: next(rss))
    B._JITS.clear()
    B._COMPILED.clear()
    B._RESERVED.clear()
    kfn = jc.batched(jc.trace_ntk(f, normalize=False), 3, memory_budget=budget, progress_bar=False)
    np.testing.assert_allclose(kfn(p, tok), want, **TOL64)
    assert planned[0] == budget and planned[-1] == budget - compiled  # planned again, with the compiled code's room
    assert list(B._RESERVED.values()) == [compiled]
    again = L._setup(f, p, tok, 6, 6, True, "trace", 3, budget - compiled, engine=True).choice
    assert again.fits and again.bytes <= budget - compiled < first.bytes  # a smaller plan (layouts or chunks)
    planned.clear()
    np.testing.assert_allclose(kfn(p, tok), want, **TOL64)
    assert planned and set(planned) == {budget - compiled}  # the next call: room left from the start


def test_factor_programs_compile_options(monkeypatch):
    """On CPU the factor programs of a model without convolutions compile with YNNPACK fusions of products only;
    a model with a convolution keeps the default; an option this jaxlib rejects falls back to the default (probed
    once), and the engine's kernel equals the float64 oracle either way."""
    f, p = _embed_model("clip")
    plan = S.analyze(f, p, (5,), jnp.int32, embeddings=True)
    g, q = _conv_scale_dense()
    x = _normal(4, (7, 6, 6, 2))
    assert B._factor_options(S.analyze(g, q, tuple(x.shape[1:]), x.dtype)) is None
    assert B._factor_options(plan) == B._YNN_DOTS  # this project's jaxlib takes the option
    want = _embed_oracle("clip", f, p)[0]["trntk0"]
    kfn = jc.batched(jc.trace_ntk(f, normalize=False), 3, progress_bar=False)
    B._JITS.clear()
    np.testing.assert_allclose(kfn(p, _TOK1), want, **TOL64)
    monkeypatch.setattr(B, "_YNN_DOTS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    monkeypatch.setattr(B, "_YNN_OK", [])
    assert B._factor_options(plan) is None and B._YNN_OK == [False]
    B._JITS.clear()
    np.testing.assert_allclose(kfn(p, _TOK1), want, **TOL64)


def test_panel_slices_and_wider_chunks():
    """A panel's program takes slices of at most the set width (a divisor of the features) and more where the
    room asks for it; the factor chunks widen with what the budget leaves, by at most half of it, up to the cap."""
    assert B._panel_slices(1024, 1, 10**9) == 1024 // B._SLICE_WIDTH
    assert B._panel_slices(96, 1, 10**9) == 1  # 96 features: one slice
    assert B._panel_slices(1024, 64 * 10**6, 10**6) == 64  # the room: 64 slices of 16 features
    assert B._panel_slices(7, 1, 10**9) == 1 and B._panel_slices(7, 10, 2) == 7  # a prime: whole, or one by one
    assert B._panel_slices(1024, 1, 10**9, rows=64) == 1024 // B._SLICE_WIDTH_FEW  # few rows: narrower slices
    assert B._panel_slices(1024, 1, 10**9, rows=256) == 1024 // B._SLICE_WIDTH
    assert L.wider_chunk(2, 100, 600, 128) == 5  # half of 600 bytes: 3 more examples of 100
    assert L.wider_chunk(2, 100, 10**9, 128) == L._CHUNK_MAX and L.wider_chunk(2, 100, 10**9, 4) == 4
    assert L.wider_chunk(2, 100, -5, 128) == 2 and L.wider_chunk(32, 100, 10**9, 128) == 32  # never narrower


def test_planner_chunks_classes_only_when_memory_is_short():
    """With room for every class's factors the planner keeps one chunk; under a budget that only chunked factors
    fit it splits the classes (and says the plan fits); the forward FLOPs are those of the model's products."""
    from jaxcompare.ntk._structured import _planner as PL

    assert PL.class_chunks(10) == [10, 5, 4, 3, 2, 1] and PL.class_chunks(1) == [1]
    f, p = _embed_model("clip", n_classes=10)
    x = jnp.zeros((64, 5), jnp.int32)
    big = L._setup(f, p, x, 64, 64, True, "trace", 64, 2**34, engine=True)
    assert big.cc == 10 and big.choice.fits
    plan = S.analyze(f, p, (5,), jnp.int32, embeddings=True)
    assert PL.forward_flops(plan, p, (5,)) == 2 * 5 * 4 * 3 + 2 * 15 * 10  # h @ W, then the head
    # a budget between the least memory of a plan with one chunk and of a plan with chunks of one class
    opts = []
    best = L.PL.best
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L.PL, "best", lambda o: opts.extend(o) or best(o))
        L._setup(f, p, x, 64, 64, True, "trace", 64, 2**34, engine=False)
    least = {c: min(o.bytes for o in opts if o.classes == c) for c in (1, 10)}
    assert least[1] < least[10]
    budget = (least[1] + least[10]) // 2
    tight = L._setup(f, p, x, 64, 64, True, "trace", 64, budget, engine=False)
    assert tight.cc < 10 and tight.choice.fits and tight.choice.bytes <= budget
    for mode, c in (("full", 10), ("pseudo", 1)):  # never chunked
        assert L._setup(f, p, x, 64, 64, True, mode, 64, 10**5, engine=True).cc == c


def test_one_small_block_forms_long_layers_in_its_tiles(monkeypatch):
    """A layer with more positions than the block has rows, whose factors are less than half its gradients: one
    block of 3 examples (FLOPs equal either way) forms its gradients in the tile's program, in slices of its output
    features (the layout needing less memory), and the kernel equals the float64 oracle; plans of equal cost differ
    only in memory."""
    from jaxcompare.ntk._structured import _planner as PL

    cheap, small, big = (PL.Choice(10, k, 1.0, b, True, 1) for k, b in ((("grad",), 9), (("lazy",), 4), (("pos",), 7)))
    assert PL.best([cheap, big, small]) is small
    assert PL.best([PL.Choice(10, ("grad",), 0.5, 9, True, 1), small]).flops == 0.5  # cost first
    p = {"E": [_normal(i, (32, 32), 0.2) for i in range(4)], "O": _normal(9, (32, 3), 0.2)}

    def f(q, x):  # 4 layers on T = 7 positions, D = E = 32, C = 3: factors 896 floats per example, gradients 3072
        for e in q["E"]:
            x = jnp.tanh(jnp.einsum("btd,de->bte", x, e))
        return jnp.mean(x, axis=1) @ q["O"]

    x = _normal(2, (3, 7, 32))
    assert L.choose_kinds(((7, 32, 32),), 3, False, 3, True) == ("grad",)  # T > rows: not lazy unless asked
    plans, programs = [], []
    setup, panel_lazy = B._setup, B._panel_lazy
    monkeypatch.setattr(B, "_setup", lambda *a, **k: plans.append(setup(*a, **k)) or plans[-1])
    monkeypatch.setattr(B, "_panel_lazy", lambda a, g, *r: programs.append(len(a)) or panel_lazy(a, g, *r))
    B._JITS.clear()
    o = oracle_kernels(f, p, x, x)
    k = jc.trace_ntk(f, normalize=False, implementation="structured")(p, x)
    np.testing.assert_allclose(k, o["trntk0"], **TOL64)
    assert plans and plans[-1].kinds == ("lazy",) * 4 + ("pos",)
    assert programs == [1]  # the panel program of one block (traced once: the four layers have one shape)


def test_model_analysed_once_per_model_and_shapes(monkeypatch):
    """Eager engine calls analyse a model once per model and shapes (the analysis traces the model: 0.5 s on the
    transformer); traced calls (inside jit) analyse it afresh and keep nothing; other shapes are analysed again."""
    calls = []
    analyze = L.analyze
    monkeypatch.setattr(L, "analyze", lambda *a, **k: calls.append(a[2]) or analyze(*a, **k))
    L._MODELS.clear()
    f, p = mlp(jax.random.key(0))
    k = jc.batched(jc.trace_ntk(f, normalize=False), 4, progress_bar=False)
    x = _normal(1, (6, 5))
    first = k(p, x)
    np.testing.assert_array_equal(k(p, x), first)
    assert calls == [(5,)]
    jax.jit(jc.trace_ntk(f, normalize=False, implementation="structured"))(p, x)
    assert calls == [(5,), (5,)] and len(L._MODELS) == 1  # traced: analysed, not kept
    k(p, _normal(2, (6, 5)))
    assert len(calls) == 2  # same shapes, new values: the kept analysis
    g = lambda q, xx: f(q, xx.reshape(xx.shape[0], -1))  # noqa: E731
    jc.batched(jc.trace_ntk(g), 4, progress_bar=False)(p, _normal(3, (6, 5, 1)))
    assert calls[-1] == (5, 1) and len(L._MODELS) == 2


def _np_patches(x, taps, strides, dil, pads):
    """Naive float64 patches of one NHWC example, by loops: ``(T, taps·C)`` in (taps, channels) order, zero where a
    tap reads padding."""
    h, w, c = x.shape
    oh = (h + pads[0][0] + pads[0][1] - dil[0] * (taps[0] - 1) - 1) // strides[0] + 1
    ow = (w + pads[1][0] + pads[1][1] - dil[1] * (taps[1] - 1) - 1) // strides[1] + 1
    out = np.zeros((oh, ow, taps[0], taps[1], c))
    for y in range(oh):
        for z in range(ow):
            for i in range(taps[0]):
                for j in range(taps[1]):
                    u = strides[0] * y + i * dil[0] - pads[0][0]
                    v = strides[1] * z + j * dil[1] - pads[1][0]
                    if 0 <= u < h and 0 <= v < w:
                        out[y, z, i, j] = x[u, v]
    return out.reshape(oh * ow, -1)


@pytest.mark.parametrize(
    "shape, taps, strides, dil, pads",
    [
        ((4, 4, 3), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
        ((8, 7, 2), (3, 3), (2, 2), (1, 1), ((1, 1), (0, 1))),
        ((7, 6, 2), (3, 2), (2, 1), (2, 1), ((2, 0), (0, 3))),
        ((6, 5, 2), (3, 3), (1, 1), (1, 1), ((-1, 2), (1, 0))),
    ],
)
def test_raw_input_patches_and_their_gram_against_numpy(shape, taps, strides, dil, pads):
    """A convolution's raw inputs: the patches formed from them and the Gram of patches as shifted Grams of pixels
    (plus 1 for a fused bias) equal naive NumPy patches and their Gram, for strides, dilations, asymmetric and
    negative (cropping) padding."""
    jax.config.update("jax_enable_x64", True)
    x = np.asarray(_normal(0, (3,) + shape))
    ref = np.stack([_np_patches(xi, taps, strides, dil, pads) for xi in x])
    oh_ow = (ref.shape[1],)
    out_sp = (
        (shape[0] + sum(pads[0]) - dil[0] * (taps[0] - 1) - 1) // strides[0] + 1,
        (shape[1] + sum(pads[1]) - dil[1] * (taps[1] - 1) - 1) // strides[1] + 1,
    )
    assert int(np.prod(out_sp)) == oh_ow[0]
    for bias in (False, True):
        geo = P.ConvGeo((0, 3, 1, 2), shape[:2], shape[2], taps, strides, dil, pads, out_sp, bias)
        want = np.concatenate([ref, np.ones(ref.shape[:2] + (1,))], -1) if bias else ref
        raw = jnp.asarray(x.reshape(3, -1, shape[2]))
        # one compiled program for both (eagerly each op compiles on its own)
        pat, gram = jax.jit(lambda r, geo=geo: (P.patches_of(r, geo), P.raw_gram(r[:2], r, geo)))(raw)
        np.testing.assert_allclose(pat, want, rtol=0, atol=0)
        np.testing.assert_allclose(gram, np.einsum("itd,jsd->tisj", want[:2], want), **TOL64)


def _conv_bias_stack():
    """NHWC 3×3 stride-1 convolution with a fused bias, an NCHW convolution with asymmetric padding, stride 2 and
    a dilated filter, a dense head: convolutions whose inputs the structured kernel keeps raw."""
    q = {
        "K1": _normal(1, (3, 3, 3, 4), 0.4),
        "b1": _normal(2, (4,), 0.2),
        "K2": _normal(3, (3, 4, 3, 3), 0.3),
        "V": _normal(4, (3 * 3 * 3, 3), 0.3),
    }

    def g(p, x):
        h = jax.lax.conv_general_dilated(x, p["K1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jnp.tanh(h + p["b1"][None, None, None, :])
        h = jnp.transpose(h, (0, 3, 1, 2))
        h = jax.lax.conv_general_dilated(
            h, p["K2"], (2, 2), ((1, 0), (2, 1)), rhs_dilation=(1, 2), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return jnp.tanh(h).reshape(h.shape[0], -1) @ p["V"]

    return g, q


@pytest.mark.parametrize("kinds", [("pos", "lazy"), ("lazy", "pos")])
def test_raw_convolution_inputs_against_oracle(monkeypatch, kinds):
    """Convolutions in the ``pos``/``lazy`` layouts keep their raw inputs, and a Gram of positions is taken as
    shifted Grams of pixels (forced here, also for the strided, dilated convolution): traced kernels and the
    blocked engine (trace with x2 = None and given, pseudo, full) equal the float64 oracle."""
    monkeypatch.setattr(L, "choose_kinds", _mixed(kinds))
    monkeypatch.setattr(B, "raw_gram_cheaper", lambda geo: True)
    grams = []
    raw_gram = B.raw_gram
    monkeypatch.setattr(B, "raw_gram", lambda a1, a2, geo: grams.append(geo) or raw_gram(a1, a2, geo))
    B._JITS.clear()
    g, q = _conv_bias_stack()
    x, x2 = _normal(8, (7, 6, 6, 3)), _normal(6, (3, 6, 6, 3))
    o, o2 = _oracle("bias stack", g, q, x, x2)
    plan = S.analyze(g, q, x.shape[1:], x.dtype)
    uses, *_ = L.dims(plan, q, x.shape[1:], x.dtype, False)
    geos = L.layer_geos(plan, uses)
    assert [geo is not None for geo in geos] == [True, True, False]
    assert geos[0].bias and not geos[1].bias
    _check_against_oracle(g, q, x, x2, o2)
    assert grams  # the Gram of pixels ran (in the layer whose layout is pos)
    bat = lambda k, bs=2: jc.batched(k, bs, progress_bar=False)  # noqa: E731
    np.testing.assert_allclose(bat(jc.trace_ntk(g, normalize=False))(q, x), o["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.trace_ntk(g, normalize=False))(q, x, x2), o2["trntk0"], **TOL64)
    np.testing.assert_allclose(bat(jc.pseudo_ntk(g))(q, x, x2), o2["pntk"], **TOL64)
    np.testing.assert_allclose(bat(jc.empirical_ntk(g), 3)(q, x), o["full"], **TOL64)


def test_raw_inputs_kept_only_where_smaller():
    """Raw inputs are kept for a 3×3 convolution (9× fewer floats than its patches), not for a 1×1 convolution
    of stride 2 (its patches skip three pixels in four); the Gram of pixels is used for stride 1 only where the
    model of its cost says so."""
    q = {"K1": _normal(1, (3, 3, 8, 8), 0.2), "K2": _normal(2, (1, 1, 8, 8), 0.2), "V": _normal(3, (4 * 4 * 8, 2))}

    def g(p, x):
        h = jnp.tanh(
            jax.lax.conv_general_dilated(x, p["K1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )
        h = jax.lax.conv_general_dilated(h, p["K2"], (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h).reshape(h.shape[0], -1) @ p["V"]

    x = _normal(4, (2, 8, 8, 8))
    plan = S.analyze(g, q, x.shape[1:], x.dtype)
    uses, *_ = L.dims(plan, q, x.shape[1:], x.dtype, False)
    geos = L.layer_geos(plan, uses)
    assert geos[0] is not None and geos[0].t_in * geos[0].c_in * 9 == uses[0][0] * uses[0][1]
    assert geos[1] is None and geos[2] is None
    # 3×3 stride 1 on 8 channels: the Gram of pixels (2·64²·8 + 50·9·64² FLOPs) is dearer than that of the
    # patches (2·64²·72); on 128 channels at 4×4 (a ResNet's last stage) it is cheaper
    assert not P.raw_gram_cheaper(geos[0])
    big = P.ConvGeo((0, 3, 1, 2), (4, 4), 128, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (4, 4), False)
    assert P.raw_gram_cheaper(big) and P.ga_flops(big) < 2 * 16**2 * 9 * 128 / 2


def test_lazy_forms_counts_the_engine_loops():
    """The planner's count of lazy-gradient formations per layer and chunk, by hand from the engine's loops:
    4 blocks, 3 resident (a panel of 2 forms each once; the 2 streamed blocks form theirs and the panel's twice;
    the last panel forms its 2), all resident (each once), and x2 given (each column forms its block and the
    panel's)."""
    from jaxcompare.ntk._structured import _planner as PL

    assert PL.lazy_forms(4, 4, True, 3) == (2 + 2 * 3) + 2
    assert PL.lazy_forms(4, 4, True, 4) == 4
    assert PL.lazy_forms(3, 2, False, 10) == 2 * (1 + 3)
    assert PL.lazy_forms(3, 2, False, 2) == 3 * 2 * (1 + 1)
