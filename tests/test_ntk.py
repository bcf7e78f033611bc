"""The NTK family against an independent float64 forward-mode flattened-Jacobian oracle; all implementations
against each other (conformance suite); transforms (batched, jit, vmap); validation.

Almost all of this file's time is compiling. The models are built once (``_model``): JAX caches the kernels on the
apply function, so tests that use the same kernel on the same model share its compiled program (a fresh closure per
test compiled everything again)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import flax_cnn, mlp, oracle_kernels, shared_weight

import jaxcompare as jc
from jaxcompare.ntk._implementations import IMPLEMENTATIONS

IMPLS = sorted(IMPLEMENTATIONS)  # every registered implementation is held to the same oracle
TOL64 = dict(rtol=1e-10, atol=1e-10)


@functools.cache
def _model(name):
    """(apply_fn, params, x1, x2) of a test model; one apply function object per model for the whole file."""
    key = jax.random.key(0)
    if name == "mlp":
        f, p = mlp(key)
        x1 = jax.random.normal(jax.random.key(1), (7, 5))
        x2 = jax.random.normal(jax.random.key(2), (4, 5))
    elif name == "shared":
        f, p = shared_weight(key)
        x1 = jax.random.normal(jax.random.key(1), (6, 6))
        x2 = jax.random.normal(jax.random.key(2), (3, 6))
    else:
        f, p = flax_cnn(key)
        x1 = jax.random.normal(jax.random.key(1), (5, 6, 6, 2))
        x2 = jax.random.normal(jax.random.key(2), (3, 6, 6, 2))
    return f, p, x1, x2


MODELS = ["mlp", "shared", "cnn"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    f, p, x1, x2 = _model(request.param)
    return f, p, x1, x2, oracle_kernels(f, p, x1, x2), oracle_kernels(f, p, x1, x1)


@pytest.mark.parametrize("impl", IMPLS)
def test_kernels_match_oracle(case, impl):
    f, p, x1, x2, o12, o11 = case
    np.testing.assert_allclose(jc.empirical_ntk(f, implementation=impl)(p, x1, x2), o12["full"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, implementation=impl)(p, x1, x2), o12["trntk0"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, implementation=impl)(p, x1, x2), o12["trntk"], **TOL64)
    np.testing.assert_allclose(jc.trace_ntk(f, implementation=impl)(p, x1), o11["trntk"], **TOL64)
    np.testing.assert_allclose(jc.pseudo_ntk(f, implementation=impl)(p, x1, x2), o12["pntk"], **TOL64)
    np.testing.assert_allclose(
        jc.pseudo_ntk(f, normalize=True, implementation=impl)(p, x1, x2), o12["pntk_norm"], **TOL64
    )


def test_trace_is_sum_and_pseudo_is_mean_of_blocks(case):
    f, p, x1, x2, o12, _ = case
    e = np.asarray(jc.empirical_ntk(f)(p, x1, x2))
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False)(p, x1, x2), np.einsum("ijcc->ij", e), **TOL64)
    c = e.shape[-1]
    np.testing.assert_allclose(jc.pseudo_ntk(f)(p, x1, x2), e.sum((2, 3)) / c, **TOL64)


@pytest.mark.parametrize("impl", IMPLS)
def test_x2_none_equals_x1_symmetric_psd_unit_diagonal(impl):
    f, p, x1, _ = _model("mlp")
    for k in (
        jc.trace_ntk(f, implementation=impl),
        jc.trace_ntk(f, normalize=False, implementation=impl),
        jc.pseudo_ntk(f, implementation=impl),
    ):
        a = np.asarray(k(p, x1))
        np.testing.assert_allclose(a, k(p, x1, x1), **TOL64)
        np.testing.assert_allclose(a, a.T, **TOL64)
        assert np.linalg.eigvalsh(a).min() > -1e-10 * np.abs(a).max()
    np.testing.assert_allclose(np.diag(jc.trace_ntk(f, implementation=impl)(p, x1)), 1.0, rtol=0, atol=1e-12)
    e = np.asarray(jc.empirical_ntk(f, implementation=impl)(p, x1))
    n, _, c, _ = e.shape
    big = e.transpose(0, 2, 1, 3).reshape(n * c, n * c)  # Gram of all (point, class) gradients
    np.testing.assert_allclose(big, big.T, **TOL64)
    assert np.linalg.eigvalsh(big).min() > -1e-10 * np.abs(big).max()


@pytest.mark.parametrize("block", [1, 3, 5])
@pytest.mark.parametrize("kind", ["trntk", "trntk0", "pntk", "entk"])
def test_batched_equals_unbatched(kind, block):
    f, p, x1, x2 = _model("mlp")
    k = {
        "trntk": jc.trace_ntk(f),
        "trntk0": jc.trace_ntk(f, normalize=False),
        "pntk": jc.pseudo_ntk(f),
        "entk": jc.empirical_ntk(f),
    }[kind]
    b = jc.batched(k, block_size=block, progress_bar=False)
    for args in ((p, x1), (p, x1, x2), (p, x2, x1)):
        ref = np.asarray(k(*args))
        np.testing.assert_allclose(b(*args), ref, **TOL64)
        np.testing.assert_allclose(jax.jit(b)(*args), ref, **TOL64)


def test_batched_user_kernel_without_spec():
    def rbf(p, a, b=None):
        b = a if b is None else b
        return jnp.exp(-p * jnp.sum((a[:, None] - b[None]) ** 2, -1))

    x = jax.random.normal(jax.random.key(0), (7, 3))
    np.testing.assert_allclose(jc.batched(rbf, 3, progress_bar=False)(0.5, x), rbf(0.5, x), **TOL64)
    np.testing.assert_allclose(jax.jit(jc.batched(rbf, 2))(0.5, x, x[:5]), rbf(0.5, x, x[:5]), **TOL64)


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_equals_eager_and_vmap_over_seeds(impl):
    f, _, x1, x2 = _model("mlp")
    keys = jax.random.split(jax.random.key(3), 3)
    stacked = jax.vmap(lambda k: mlp(k)[1])(keys)
    k = jc.trace_ntk(f, implementation=impl)
    np.testing.assert_allclose(jax.jit(k)(mlp(keys[0])[1], x1, x2), k(mlp(keys[0])[1], x1, x2), **TOL64)
    vm = jax.vmap(k, in_axes=(0, None, None))(stacked, x1, x2)
    loop = np.stack([k(jax.tree_util.tree_map(lambda l: l[i], stacked), x1, x2) for i in range(3)])  # noqa: B023
    np.testing.assert_allclose(vm, loop, **TOL64)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_kept_and_close_to_float64(impl):
    f, p64, x, _ = _model("mlp")  # the float64 kernels are the ones test_x2_none_equals_x1... compiled
    p32 = jax.tree_util.tree_map(lambda l: l.astype(jnp.float32), p64)
    for k in (jc.trace_ntk, jc.pseudo_ntk, jc.empirical_ntk):
        kf = k(f, implementation=impl)
        a32 = kf(p32, x.astype(jnp.float32))
        assert a32.dtype == jnp.float32
        a64 = kf(p64, x)
        np.testing.assert_allclose(a32, a64, rtol=2e-5, atol=2e-5 * float(jnp.abs(a64).max()))


def test_projection_unbiased_and_error_shrinks_like_inverse_sqrt_dim():
    """E[proj] = exact (checked on the mean of 64 draws) and RMSE(k=1024)/RMSE(k=64) ≈ 1/4.

    Each projected entry is an average of k iid terms, so MSE ∝ 1/k exactly in expectation, at any k (the dims were
    256 and 4096: the same ratio 16 at a sixteenth of the forward passes, and the Rademacher program at k = 64 is the
    one the unbiasedness check uses); with 12 draws per dim the ratio of mean-squared errors has a spread of roughly
    ±40% (chi-square with many d.o.f.); the test accepts [1/32, 1/8] for the MSE ratio (expected 1/16): a false
    failure needs a >2x deviation (prob. < 1e-4).
    """
    f, p, x1, x2 = _model("mlp")
    exact = np.asarray(jc.trace_ntk(f, normalize=False)(p, x1, x2))
    for kind in ("rademacher", "gaussian"):

        def mse(dim, n):
            errs = []
            for s in range(n):
                proj = jc.random_projection(jax.random.key(100 + s), dim, kind)  # noqa: B023
                errs.append(np.asarray(jc.trace_ntk(f, normalize=False, projection=proj)(p, x1, x2)) - exact)
            return np.mean(np.square(errs)), np.mean(errs, axis=0)

        m_small, _ = mse(64, 12)
        m_big, _ = mse(1024, 12)
        assert 1 / 32 < m_big / m_small < 1 / 8, (kind, m_big / m_small)
    # unbiasedness: mean of 64 draws at dim 64 is within 4 standard errors of the exact kernel
    draws = np.stack(
        [
            jc.trace_ntk(f, normalize=False, projection=jc.random_projection(jax.random.key(s), 64))(p, x1, x2)
            for s in range(64)
        ]
    )
    se = draws.std(0) / np.sqrt(64)
    assert np.all(np.abs(draws.mean(0) - exact) < 4 * se + 1e-12)


def test_projection_consistency_and_pseudo():
    """Same key same result; chunking does not change R; projected pNTK unbiased-ish; normalized diag is 1."""
    f, p, x1, x2 = _model("mlp")
    a = jc.random_projection(jax.random.key(5), 300, chunk_size=7)
    b = jc.random_projection(jax.random.key(5), 300, chunk_size=300)
    ka = jc.trace_ntk(f, projection=a)(p, x1, x2)
    np.testing.assert_allclose(ka, jc.trace_ntk(f, projection=b)(p, x1, x2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ka, jc.trace_ntk(f, projection=a)(p, x1, x2), rtol=0, atol=0)
    np.testing.assert_allclose(np.diag(jc.trace_ntk(f, projection=a)(p, x1)), 1.0, atol=1e-12)
    # batched projected kernel equals unbatched (R is shared across tiles)
    np.testing.assert_allclose(
        jc.batched(jc.trace_ntk(f, projection=a), 3, progress_bar=False)(p, x1),
        jc.trace_ntk(f, projection=a)(p, x1),
        **TOL64,
    )
    exact = np.asarray(jc.pseudo_ntk(f)(p, x1, x2))
    big = jc.pseudo_ntk(f, projection=jc.random_projection(jax.random.key(9), 20000))(p, x1, x2)
    np.testing.assert_allclose(big, exact, atol=0.05 * np.abs(exact).max())


def test_conjugate_and_embedding_kernels_against_numpy():
    f, p, x1, x2 = _model("mlp")

    def feats(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"][None, :])

    def layers(p, x):
        h = feats(p, x)
        return {"h": h, "out": h @ p["W2"] + p["b2"][None, :]}

    h1, h2 = np.asarray(feats(p, x1)), np.asarray(feats(p, x2))
    np.testing.assert_allclose(jc.conjugate_kernel(feats)(p, x1, x2), h1 @ h2.T, **TOL64)
    n1, n2 = np.linalg.norm(h1, axis=1), np.linalg.norm(h2, axis=1)
    np.testing.assert_allclose(
        jc.conjugate_kernel(feats, normalize=True)(p, x1, x2), h1 @ h2.T / np.outer(n1, n2), **TOL64
    )
    o1, o2 = np.asarray(f(p, x1)), np.asarray(f(p, x2))
    raw = h1 @ h2.T + o1 @ o2.T
    d1 = (h1**2).sum(1) + (o1**2).sum(1)
    d2 = (h2**2).sum(1) + (o2**2).sum(1)
    np.testing.assert_allclose(jc.embedding_kernel(layers)(p, x1, x2), raw / np.sqrt(np.outer(d1, d2)), **TOL64)
    np.testing.assert_allclose(jc.embedding_kernel(layers, normalize=False)(p, x1, x2), raw, **TOL64)
    np.testing.assert_allclose(
        jc.batched(jc.embedding_kernel(layers), 2, progress_bar=False)(p, x1),
        jc.embedding_kernel(layers)(p, x1),
        **TOL64,
    )


def test_linen_layers_fn_embedding_kernel():
    import flax.linen as nn

    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.tanh(nn.Dense(5)(x))
            return nn.Dense(2)(h)

    m = M()
    v = m.init(jax.random.key(0), jnp.zeros((1, 3)))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    k = jc.embedding_kernel(jc.linen_layers_fn(m, v), normalize=False)(v["params"], x)
    d0 = np.asarray(x @ v["params"]["Dense_0"]["kernel"] + v["params"]["Dense_0"]["bias"][None, :])
    out = np.asarray(m.apply(v, x))
    # captured: Dense_0 output, Dense_1 output, and the module output (== Dense_1 output)
    np.testing.assert_allclose(k, d0 @ d0.T + 2 * out @ out.T, rtol=1e-5, atol=1e-5)


def test_nnx_and_stax_adapters_match_plain_function():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 6, rngs=rngs, param_dtype=jnp.float64)
            self.l2 = nnx.Linear(6, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    net = Net(nnx.Rngs(0))
    apply_fn, params = jc.from_nnx(net)
    x = jax.random.normal(jax.random.key(1), (5, 4))
    w1, b1 = net.l1.kernel[...], net.l1.bias[...]
    w2, b2 = net.l2.kernel[...], net.l2.bias[...]

    def plain(p, x):
        return jnp.tanh(x @ p[0] + p[1][None, :]) @ p[2] + p[3][None, :]

    ref = oracle_kernels(plain, (w1, b1, w2, b2), x, x)
    np.testing.assert_allclose(jc.trace_ntk(apply_fn)(params, x), ref["trntk"], **TOL64)

    def stax_apply(params, inputs, **kwargs):  # stax convention: params is a list of per-layer tuples
        (w1, b1), (w2, b2) = params
        return jnp.tanh(inputs @ w1 + b1[None, :]) @ w2 + b2[None, :]

    k = jc.trace_ntk(jc.from_stax(stax_apply), normalize=False)([(w1, b1), (w2, b2)], x)
    np.testing.assert_allclose(k, ref["trntk0"], **TOL64)


def test_zero_gradient_points_give_zero_rows_not_nan():
    f0 = lambda p, x: jnp.tanh(x @ p["W1"]) @ p["W2"]  # no biases: x = 0 has a zero gradient
    _, p = mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 5)).at[2].set(0.0)
    for k in (jc.trace_ntk(f0), jc.pseudo_ntk(f0, normalize=True), jc.batched(jc.trace_ntk(f0), 3, progress_bar=False)):
        with pytest.warns(RuntimeWarning, match="zero"):
            a = np.asarray(k(p, x))
        assert np.all(np.isfinite(a))
        assert np.all(a[2] == 0) and np.all(a[:, 2] == 0)
        np.testing.assert_allclose(np.diag(a)[[0, 1, 3]], 1.0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.isfinite(jax.jit(jc.trace_ntk(f0))(p, x)))


def test_bad_inputs_raise_clear_errors():
    f, p, x1, x2 = _model("mlp")
    k = jc.trace_ntk(f)
    with pytest.raises(ValueError, match="same per-example shape"):
        k(p, x1, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        jc.trace_ntk(lambda p, x: f(p, x)[:, 0])(p, x1)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        jc.trace_ntk(lambda p, x: f(p, x)[:2])(p, x1)
    with pytest.raises(ValueError, match="x1 must be finite"):
        k(p, x1.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="x2 must be finite"):
        k(p, x1, x2.at[0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match=r"params\['W1'\] must be finite"):
        k({**p, "W1": p["W1"].at[0, 0].set(jnp.nan)}, x1)
    with pytest.raises(ValueError, match="empty"):
        k(p, jnp.ones((0, 5)))
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        jc.batched(k, 0)
    with pytest.raises(TypeError, match="block_size must be an integer"):
        jc.batched(k, 2.5)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        jc.random_projection(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="kind"):
        jc.random_projection(jax.random.key(0), 4, kind="sparse-ish")
    with pytest.raises(TypeError, match="PRNG key"):
        jc.random_projection(0, 4)
    with pytest.raises(ValueError, match="implementation"):
        jc.trace_ntk(f, implementation="magic")
    with pytest.raises(TypeError, match="callable"):
        jc.trace_ntk(3)
    with pytest.raises(TypeError, match="projection"):
        jc.trace_ntk(f, projection=64)
    with pytest.raises(TypeError, match="apply_fn"):
        jc.trace_ntk(lambda p, x: p["missing"])(p, x1)
