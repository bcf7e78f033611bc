"""Scalable projections: the sparse JL sketch (kind="sparse") and the Kronecker-factored projection.

Oracles: the exact float64 kernels (forward-mode Jacobians, ntk_models.oracle_kernels). Statistical tests use
t-statistics of the mean over independent keys; thresholds and false-failure probabilities are stated per test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc

TOL64 = dict(rtol=1e-10, atol=1e-10)


def _mlp_data():
    f, p = mlp(jax.random.key(0))
    return f, p, jax.random.normal(jax.random.key(1), (6, 5)), jax.random.normal(jax.random.key(2), (4, 5))


def _projections(kind, seed):
    key = jax.random.key(seed)
    if kind == "sparse":
        return jc.random_projection(key, 16, "sparse", nnz=2)
    return jc.kronecker_projection(key, 3, 2, kind="gaussian" if kind == "kron-gauss" else "rademacher")


@pytest.mark.parametrize("kind", ["sparse", "kron", "kron-gauss"])
def test_unbiased(kind):
    """Mean of S=40 independent projected trNTK⁰ / pNTK equals the exact kernel: every entry's t-statistic
    |mean - exact| / (sd / sqrt(S)) < 5. Per entry P(|t_39| > 5) ≈ 1.3e-5; 2 kernels × 24 entries give a
    false-failure probability < 1e-3 (the projected entries are sums of many bounded terms, close to normal)."""
    f, p, x1, x2 = _mlp_data()
    o = oracle_kernels(f, p, x1, x2)
    s = 40
    tr = np.stack([jc.trace_ntk(f, normalize=False, projection=_projections(kind, i))(p, x1, x2) for i in range(s)])
    ps = np.stack([jc.pseudo_ntk(f, projection=_projections(kind, i))(p, x1, x2) for i in range(s)])
    for draws, exact in ((tr, o["trntk0"]), (ps, o["pntk"])):
        t = np.abs(draws.mean(0) - exact) / (draws.std(0, ddof=1) / np.sqrt(s) + 1e-300)
        assert t.max() < 5, t.max()
        assert np.all(draws.std(0) > 0)  # genuinely random


def test_error_of_cosine_kernel_shrinks_with_dim():
    """|Δcos| of the normalized projected trNTK falls with dim: the mean over 5 keys at 16× the dim is below half
    of that at the small dim (expected ratio ≈ 1/4 since |Δ| ∝ 1/√dim; a false failure needs a 2× deviation of a
    mean of 5 × 10 error magnitudes, probability < 1e-3). The Kronecker projection's error as a function of its
    dims is measured in benchmarks/bench_ntk_projection.py (its variance is not a function of k_in·k_out alone)."""
    f, p, x, _ = _mlp_data()
    x = x[:5]
    exact = np.asarray(oracle_kernels(f, p, x, x)["trntk"])
    iu = np.triu_indices(5, 1)

    def err(dim, seed):
        proj = jc.random_projection(jax.random.key(seed), dim, "sparse")
        return np.abs(np.asarray(jc.trace_ntk(f, projection=proj)(p, x)) - exact)[iu].mean()

    e_small = np.mean([err(16, i) for i in range(5)])
    e_big = np.mean([err(256, i) for i in range(5)])
    assert e_big < 0.5 * e_small, (e_small, e_big)


@pytest.mark.slow
def test_kronecker_exact_when_factors_cover_layers_and_deterministic():
    f, p, x1, x2 = _mlp_data()
    o = oracle_kernels(f, p, x1, x2)
    full = jc.kronecker_projection(jax.random.key(0), 64, 64)  # >= every layer dim: identity factors, exact
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, projection=full)(p, x1, x2), o["trntk0"], **TOL64)
    np.testing.assert_allclose(jc.pseudo_ntk(f, projection=full)(p, x1, x2), o["pntk"], **TOL64)
    proj = jc.kronecker_projection(jax.random.key(3), 3, 2)
    assert proj.feature_dim(f, p, x1) == 3 * 2 + 3 * 2  # two layers (inputs 6 and 8 with the bias feature)
    k = jc.trace_ntk(f, projection=proj)
    a = k(p, x1, x2)
    np.testing.assert_array_equal(a, k(p, x1, x2))
    np.testing.assert_allclose(jax.jit(k)(p, x1, x2), a, **TOL64)
    assert not np.allclose(a, jc.trace_ntk(f, projection=jc.kronecker_projection(jax.random.key(4), 3, 2))(p, x1, x2))
    np.testing.assert_allclose(np.diag(k(p, x1)), 1.0, atol=1e-12)
    # batched projected kernel equals unbatched (the factors are shared across tiles)
    np.testing.assert_allclose(jc.batched(k, 4, progress_bar=False)(p, x1), k(p, x1), **TOL64)


def test_kronecker_fallback_leaves_projected_densely():
    """A shared weight (no Kronecker structure) with more entries than dim_in·dim_out is projected by a dense
    block-generated matrix: deterministic and unbiased (mean of 40 draws, |t| < 5 as in test_unbiased)."""
    from ntk_models import shared_weight

    f, p = shared_weight(jax.random.key(0))
    x1, x2 = jax.random.normal(jax.random.key(1), (4, 6)), jax.random.normal(jax.random.key(2), (3, 6))
    exact = oracle_kernels(f, p, x1, x2)["trntk0"]
    proj = jc.kronecker_projection(jax.random.key(0), 3, 2)
    assert proj.feature_dim(f, p, x1) == 3 * 2 + 6  # V: 3×2 factored; W (36 entries) -> 6 dense rows
    draws = np.stack(
        [
            jc.trace_ntk(f, normalize=False, projection=jc.kronecker_projection(jax.random.key(i), 3, 2))(p, x1, x2)
            for i in range(40)
        ]
    )
    t = np.abs(draws.mean(0) - exact) / (draws.std(0, ddof=1) / np.sqrt(40))
    assert t.max() < 5, t.max()


@pytest.mark.slow
def test_sparse_sketch_chunking_dtype_and_validation():
    f, p, x1, x2 = _mlp_data()
    a = jc.random_projection(jax.random.key(5), 50, "sparse", nnz=3, chunk_size=2)
    b = jc.random_projection(jax.random.key(5), 50, "sparse", nnz=3, chunk_size=6)
    np.testing.assert_allclose(
        jc.trace_ntk(f, projection=a)(p, x1, x2), jc.trace_ntk(f, projection=b)(p, x1, x2), **TOL64
    )
    p32 = jax.tree_util.tree_map(lambda l: l.astype(jnp.float32), p)
    for proj in (a, jc.kronecker_projection(jax.random.key(0), 3, 2)):
        k32 = jc.trace_ntk(f, projection=proj)(p32, x1.astype(jnp.float32), x2.astype(jnp.float32))
        assert k32.dtype == jnp.float32
        np.testing.assert_allclose(k32, jc.trace_ntk(f, projection=proj)(p, x1, x2), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="nnz must be <= dim"):
        jc.random_projection(jax.random.key(0), 4, "sparse", nnz=5)
    with pytest.raises(ValueError, match="nnz must be >= 1"):
        jc.random_projection(jax.random.key(0), 4, "sparse", nnz=0)
    with pytest.raises(ValueError, match="dim_in must be >= 1"):
        jc.kronecker_projection(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="kind"):
        jc.kronecker_projection(jax.random.key(0), 4, kind="sparse")
    with pytest.raises(TypeError, match="PRNG key"):
        jc.kronecker_projection(3, 4)
