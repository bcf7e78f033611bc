"""Scalable projections: the sparse JL sketch (kind="sparse") and the Kronecker-factored projection.

Oracles: the exact float64 kernels (forward-mode Jacobians, ntk_models.oracle_kernels). Statistical tests use
t-statistics of the mean over independent keys; thresholds and false-failure probabilities are stated per test.

Almost all of this file's time is compiling: the MLP's apply function and its oracle kernels are built once
(``_mlp_data``), so tests that use the same kernel with the same static settings share its compiled program (JAX
caches the kernels on the apply function; a fresh closure per test compiled everything again). A draw of a new key
costs milliseconds once its program is compiled."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import mlp, oracle_jacobian, oracle_kernels, tiny_transformer

import jaxcompare as jc

TOL64 = dict(rtol=1e-10, atol=1e-10)


@functools.cache
def _mlp_data():
    """One MLP (one apply function object, so compiled kernels are shared across tests) and its inputs."""
    f, p = mlp(jax.random.key(0))
    return f, p, jax.random.normal(jax.random.key(1), (6, 5)), jax.random.normal(jax.random.key(2), (4, 5))


@functools.cache
def _mlp_oracle():
    """The float64 oracle kernels of :func:`_mlp_data` between x1 and x2 (read-only NumPy arrays)."""
    f, p, x1, x2 = _mlp_data()
    out = oracle_kernels(f, p, x1, x2)
    for v in out.values():
        v.flags.writeable = False
    return out


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
    o = _mlp_oracle()
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
    o = _mlp_oracle()
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
    """Examples sketched 2 at a time (three chunks of x1, two of x2) give the kernel of one chunk (the automatic
    chunk holds every example here); float32 parameters and inputs keep float32 with the sparse and the Kronecker
    projection, close to float64 (rtol 1e-4, atol 1e-5·max|K|). The unnormalized trNTK⁰ with the projections of
    test_unbiased (dim 16, nnz 2; Kronecker 3×2): the float64 programs are the ones those tests compiled."""
    f, p, x1, x2 = _mlp_data()
    a = jc.random_projection(jax.random.key(5), 16, "sparse", nnz=2, chunk_size=2)
    b = jc.random_projection(jax.random.key(5), 16, "sparse", nnz=2)
    from jaxcompare.ntk._projection import _SKETCH_ELEMENTS

    n_par = sum(leaf.size for leaf in jax.tree_util.tree_leaves(p))
    assert _SKETCH_ELEMENTS // (3 * n_par) >= len(x1)  # b's automatic chunk: all examples at once
    k64 = jc.trace_ntk(f, normalize=False, projection=b)(p, x1, x2)
    np.testing.assert_allclose(jc.trace_ntk(f, normalize=False, projection=a)(p, x1, x2), k64, **TOL64)
    p32 = jax.tree_util.tree_map(lambda l: l.astype(jnp.float32), p)
    for proj in (a, jc.kronecker_projection(jax.random.key(0), 3, 2)):
        k = jc.trace_ntk(f, normalize=False, projection=proj)
        k32 = k(p32, x1.astype(jnp.float32), x2.astype(jnp.float32))
        assert k32.dtype == jnp.float32
        want = np.asarray(k(p, x1, x2))
        np.testing.assert_allclose(k32, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
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


# ---- the structured sketch's fold (jaxcompare/ntk/_sketch.py) ----------------------------------------------------


@pytest.mark.parametrize("d,e,m", [(6, 7, 8), (17, 32, 16), (1152, 128, 512), (144, 16, 2048), (33, 4, 8), (40, 9, 6)])
def test_fold_layout_invariants(d, e, m):
    """The layout conditions the variance argument needs (module docstring of _sketch): eh divides m, a half-block
    (eh × w) folds exactly (eh·w ≡ 0 mod m), rows σ apart never share a bucket (σ·w ≢ 0 mod m), w ≤ m/2 (no
    rectangle collisions), and the chunks cover the layer."""
    from jaxcompare.ntk._sketch import _layout

    lay = _layout(d, e, m)
    assert lay is not None
    assert m % lay.eh == 0 and 2 * lay.eh >= e and (lay.eh * lay.w) % m == 0 and lay.w <= m // 2
    assert lay.r * lay.w >= d and all((s * lay.w) % m for s in range(1, lay.eh))
    assert _layout(5, 40, 8) is None and _layout(5, 3, 1) is None  # E > 2m (_fold_choice: groups), or m < 2


def _fold_oracle(grads, lay, tabs, m, e0, eg):
    """float64 NumPy fold of explicit gradients ``grads`` (N, C, E, D) with one group's tables, its outputs
    ``e0 + [0, eg)``: every entry (e, d) added with its sign into the bucket its column slot (chunk, position), row
    slot (half-block, row) and the half-block's offset assign it. Also asserts that inside one chunk's half-block no
    two entries of the same row or column share a bucket (what makes the variance that of a dense projection)."""
    n, c, e, d = grads.shape
    cols, s_in, rows, s_out, offsets = (np.asarray(v) for v in tabs)
    want = np.zeros((n, c, 2, m))
    for j in range(lay.r):
        for h in range(2):
            seen_row, seen_col = {}, {}
            for rho in range(lay.eh):
                row_slot = h * lay.eh + rho
                ee = e0 + rows[j, row_slot]
                for s in range(lay.w):
                    dd = cols[j * lay.w + s]
                    if rows[j, row_slot] >= eg or ee >= e or dd >= d:
                        continue  # a padding slot: zero
                    b = ((rho * lay.w + s) % m + offsets[h]) % m
                    want[:, :, h, b] += s_out[j, row_slot] * s_in[j * lay.w + s] * grads[:, :, ee, dd]
                    assert (ee, b) not in seen_row and (dd, b) not in seen_col
                    seen_row[ee, b] = seen_col[dd, b] = True
    return want


def test_fold_layer_equals_explicit_countsketch():
    """_fold_layer against a float64 NumPy oracle (_fold_oracle): the per-example gradients Σ_t a_t ⊗ g_ct formed
    explicitly, each entry added with its sign into the bucket the tables assign it (one offset per half-block: the
    chunks are summed before the fold)."""
    from jaxcompare.ntk._sketch import _fold_layer, _fold_tables, _layout

    n, c, t, d, e, m = 3, 2, 4, 11, 6, 8
    a = np.asarray(jax.random.normal(jax.random.key(0), (n, t, d)), np.float64)
    g = np.asarray(jax.random.normal(jax.random.key(1), (n, c, t, e)), np.float64)
    lay = _layout(d, e, m)
    assert lay.r > 1 and lay.groups == 1  # several chunks share each half-block's buckets
    tabs = _fold_tables(jax.random.key(2), lay, d, e, jnp.float64)
    got = np.asarray(_fold_layer(jnp.asarray(a), jnp.asarray(g), lay, tabs))
    grads = np.einsum("ntd,ncte->nced", a, g)
    np.testing.assert_allclose(got, _fold_oracle(grads, lay, tabs, m, 0, e), rtol=1e-12, atol=1e-12)


def test_fold_of_a_layer_with_more_outputs_than_buckets_in_groups():
    """A layer with E > 2m outputs (a transformer's MLP at K < 4d) folds in groups of ceil(E/groups) outputs, each
    with its own tables and offsets: the sum of the groups' oracle folds, the last group's missing rows zero; and
    _fold_choice cuts such layers into groups (it sent them to the rows path before)."""
    import dataclasses

    from jaxcompare.ntk._sketch import _fold_choice, _fold_layer, _fold_tables, _layout

    n, c, t, d, e, m = 2, 2, 3, 11, 21, 8  # 21 outputs > 2m = 16: two groups of 11 (the second: 10 and a zero row)
    a = np.asarray(jax.random.normal(jax.random.key(0), (n, t, d)), np.float64)
    g = np.asarray(jax.random.normal(jax.random.key(1), (n, c, t, e)), np.float64)
    lay = dataclasses.replace(_layout(d, 11, m), groups=2)
    tabs = _fold_tables(jax.random.key(2), lay, d, e, jnp.float64)
    assert tabs[0].shape[0] == 2 and not np.array_equal(np.asarray(tabs[2][0]), np.asarray(tabs[2][1]))  # own tables
    got = np.asarray(_fold_layer(jnp.asarray(a), jnp.asarray(g), lay, tabs))
    grads = np.einsum("ntd,ncte->nced", a, g)
    one = dataclasses.replace(lay, groups=1)
    want = sum(_fold_oracle(grads, one, tuple(v[j] for v in tabs), m, j * 11, 11) for j in range(2))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert _fold_choice(14, 1, 64, 16).groups == 2 and _fold_choice(768, 64, 3072, 512).groups == 3


def test_embedding_rows_equal_explicit_countsketch():
    """_embed_rows against a float64 NumPy oracle: each example's embedding gradient Σ_t e_{k_t} ⊗ δ_ct is formed
    densely (V × E, repeated ids summed, an out-of-range id -1 dropped) and every entry (k, e) is added with its sign
    into its bucket, both read from the hash of all V × E entries at once."""
    from jaxcompare.ntk._sketch import _embed_hash, _embed_keys, _embed_rows

    n, c, t, e, v, dim = 3, 2, 5, 4, 6, 16
    ids = np.array([[0, 3, 3, 5, -1], [1, 1, 1, 1, 1], [5, 4, 2, 0, 3]], np.int32)[:, :, None]
    g = np.asarray(jax.random.normal(jax.random.key(0), (n, c, t, e)), np.float64)
    col_keys = _embed_keys(jax.random.bits(jax.random.key(1), (2,), jnp.uint32), e)
    got = np.asarray(_embed_rows(jnp.asarray(ids), jnp.asarray(g), col_keys, dim))  # (dim, N·C)
    b, bits = map(np.asarray, _embed_hash(col_keys, jnp.arange(v), dim))  # (V, E)
    assert b.shape == (v, e) and b.min() >= 0 and b.max() < dim
    want = np.zeros((dim, n, c))
    for i in range(n):
        grad = np.zeros((v, c, e))
        for tt in range(t):
            if ids[i, tt, 0] >= 0:
                grad[ids[i, tt, 0]] += g[i, :, tt, :]
        for k in range(v):
            for ee in range(e):
                want[b[k, ee], i] += (1 - 2 * bits[k, ee]) * grad[k, :, ee]
    np.testing.assert_allclose(got, want.reshape(dim, n * c), rtol=1e-12, atol=1e-12)


def test_embedding_hash_is_uniform_and_has_no_rectangles():
    """The embedding entries' hash on a 300 × 64 table into 64 buckets: bucket counts uniform (chi-square p > 1e-4),
    signs balanced, pairs of distinct entries collide at rate 1/64, and the four signs of a rectangle (k, e), (k, e'),
    (k', e), (k', e') — the pattern of an embedding gradient's entries, where hashes that factor over rows and columns
    (or XOR tabulation) correlate — multiply to mean zero; each rate within 5 standard errors."""
    import scipy.stats

    from jaxcompare.ntk._sketch import _embed_hash, _embed_keys

    v, e, dim = 300, 64, 64
    col_keys = _embed_keys(jax.random.bits(jax.random.key(3), (2,), jnp.uint32), e)
    b, bits = map(np.asarray, _embed_hash(col_keys, jnp.arange(v), dim))
    assert scipy.stats.chisquare(np.bincount(b.ravel(), minlength=dim)).pvalue > 1e-4
    s = 1.0 - 2.0 * bits
    m = s.size
    assert abs(s.mean()) < 5 / np.sqrt(m)
    flat = b.ravel()
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, m, (2, 200_000))
    i, j = i[i != j], j[i != j]
    rate = np.mean(flat[i] == flat[j])
    assert abs(rate - 1 / dim) < 5 * np.sqrt((1 / dim) * (1 - 1 / dim) / i.size), rate
    rect = s[:-1, :-1] * s[:-1, 1:] * s[1:, :-1] * s[1:, 1:]  # adjacent rows and columns
    far = s[: v // 2, : e // 2] * s[: v // 2, e // 2 :] * s[v // 2 :, : e // 2] * s[v // 2 :, e // 2 :]
    for r in (rect, far):
        assert abs(r.mean()) < 5 / np.sqrt(r.size), r.mean()
    same_row = np.mean(b[:, :-1] == b[:, 1:]), np.mean(b[:-1] == b[1:])  # one row's or one column's neighbours
    for r in same_row:
        assert abs(r - 1 / dim) < 5 * np.sqrt((1 / dim) / (v * e)), r


def _embedding_only(key, vocab=40, d=8, n_classes=3):
    """Only an embedding table is trained: every feature comes from the sketch's embed path."""
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k2, (d, n_classes), jnp.float64) / np.sqrt(d)  # a constant, not a parameter

    def apply_fn(p, tokens):
        return jnp.mean(jnp.tanh(p["emb"][tokens]), axis=1) @ w

    return apply_fn, {"emb": jax.random.normal(k1, (vocab, d), jnp.float64)}


@pytest.mark.parametrize("model", ["transformer", "embedding only"])
def test_structured_sketch_of_models_with_an_embedding_table(model):
    """Token embeddings are sketched from the token ids (never a dense V × d gradient): over 400 keys the projected
    trNTK⁰ is unbiased (every entry's |t| < 5) and its summed variance is that of a dense Rademacher projection
    (ratio in [0.5, 1.25], as in the MLP test below), against float64 oracle gradients; on a transformer (every
    path together) and on a model whose only parameter is the table (the embed path alone; tokens repeat within an
    example)."""
    from jaxcompare.ntk._structured import analyze

    if model == "transformer":
        f, p = tiny_transformer(jax.random.key(20), vocab=40, d=8, seq=6)
    else:
        f, p = _embedding_only(jax.random.key(20))
    x = jax.random.randint(jax.random.key(21), (4, 6), 0, 40 if model == "transformer" else 5)
    plan = analyze(f, p, (6,), x.dtype, embeddings=True)
    assert [u.kind for u in plan.uses].count("embed") == 1  # the table takes the embed path
    if model == "embedding only":  # its hash tables: a key per column, nothing of the table's size V·E = 320
        ready = jc.structured_projection(jax.random.key(0), 32).prepared(f, p, x)
        assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(ready.tables)) <= 2 * 8
    jac = np.asarray(oracle_jacobian(f, p, x))  # (N, C, P)
    dim = 32
    gram = np.einsum("icp,jdp->ijcd", jac, jac)
    quart = np.einsum("icp,idp,jcp,jdp->ij", jac, jac, jac, jac)
    var = (np.einsum("iicd,jjcd->ij", gram, gram) + np.einsum("ijcd,jicd->ij", gram, gram) - 2 * quart) / dim
    exact = np.einsum("ijcc->ij", gram)

    def k0(key):
        phi = jc.structured_projection(key, dim).features(f, p, x)
        return jnp.einsum("ick,jck->ij", phi, phi)

    s = 400
    ks = np.asarray(jax.jit(jax.vmap(k0))(jax.random.split(jax.random.key(22), s)))
    t = np.abs(ks.mean(0) - exact) / (ks.std(0, ddof=1) / np.sqrt(s))
    assert t.max() < 5, t.max()
    iu = np.triu_indices(4)
    ratio = ks.var(0, ddof=1)[iu].sum() / var[iu].sum()
    assert 0.5 < ratio < 1.25, ratio


@pytest.mark.parametrize("d_in,width", [(16, 32), (14, 64)])
def test_structured_sketch_variance_at_most_a_dense_rademacher_projections(d_in, width):
    """Var of the projected trNTK⁰ entries over 400 keys against the closed-form variance of a dense Rademacher
    projection of the same dimension, (1/K) Σ_{c,c'} (<u_c,u_c'><v_c,v_c'> + <u_c,v_c'><v_c,u_c'> − 2 Σ_p
    u_cp u_c'p v_cp v_c'p) (u = g(x_i), v = g(x_j), float64 oracle gradients), summed over the 10 entries of a
    4-point kernel. A wide MLP (dense layers: rank-one gradients, where sketches with structured signs pay up to
    3×) whose layers take the fold path; with 64 hidden units, more than the 2m = 32 rows a fold holds, its first
    layer folds in two groups. The ratio must lie in [0.5, 1.25]: the sampling error of the summed variance is ≤ 7%
    (relative sd of a 399-dof variance estimate), so a false failure needs a 3.5σ deviation (< 3e-4)."""
    k1, k2 = jax.random.split(jax.random.key(10))
    p = {
        "W1": jax.random.normal(k1, (d_in, width), jnp.float64) / np.sqrt(d_in),
        "W2": jax.random.normal(k2, (width, 4), jnp.float64) / np.sqrt(width),
    }

    def f(pp, x):
        return jnp.tanh(x @ pp["W1"]) @ pp["W2"]

    from jaxcompare.ntk._sketch import _fold_choice

    lays = _fold_choice(d_in, 1, width, 16), _fold_choice(width, 1, 4, 16)
    assert None not in lays and lays[0].groups == width // 32  # both layers fold; the first in groups when wide
    x = jax.random.normal(jax.random.key(11), (4, d_in), jnp.float64)
    jac = np.asarray(oracle_jacobian(f, p, x))  # (N, C, P)
    dim = 32
    gram = np.einsum("icp,jdp->ijcd", jac, jac)  # <g_ic, g_jd>
    quart = np.einsum("icp,idp,jcp,jdp->ij", jac, jac, jac, jac)
    var = (np.einsum("iicd,jjcd->ij", gram, gram) + np.einsum("ijcd,jicd->ij", gram, gram) - 2 * quart) / dim

    def k0(key):
        phi = jc.structured_projection(key, dim).features(f, p, x)
        return jnp.einsum("ick,jck->ij", phi, phi)

    ks = np.asarray(jax.jit(jax.vmap(k0))(jax.random.split(jax.random.key(12), 400)))
    iu = np.triu_indices(4)
    ratio = ks.var(0, ddof=1)[iu].sum() / var[iu].sum()
    assert 0.5 < ratio < 1.25, ratio


def test_rademacher_chunk_fits_the_memory_budget(monkeypatch):
    """The dense projections' automatic chunk counts the chunk × N forward-mode passes: chunk rows of P numbers and
    the tangents of every intermediate of the N examples stay within JAXCOMPARE_MEMORY_BUDGET (the estimate is
    checked against the sizes of the model's intermediates counted here by hand)."""
    from jaxcompare.ntk._projection import _intermediate_elements

    f, p = mlp(jax.random.key(0), d_in=5, width=7, n_classes=3)
    x = jax.random.normal(jax.random.key(1), (50, 5))
    act = _intermediate_elements(f, p, x)
    assert act >= 7 + 7 + 3  # x@W1, +b1, tanh, @W2, +b2 for one example: at least the hidden and output values
    proj = jc.random_projection(jax.random.key(0), 1000)
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "200K")
    chunk = proj._chunk(66, 50, act, 8)
    assert 1 <= chunk and chunk * 8 * (2 * 66 + 2 * 50 * act) <= 200 * 1024
    assert (chunk + 1) * 8 * (2 * 66 + 2 * 50 * act) > 200 * 1024 or chunk == 256
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "1K")
    assert proj._chunk(66, 50, act, 8) == 1  # never zero rows
    np.testing.assert_allclose(  # and the result does not depend on the chunk
        jc.trace_ntk(f, projection=jc.random_projection(jax.random.key(3), 12, chunk_size=5))(p, x[:4]),
        jc.trace_ntk(f, projection=jc.random_projection(jax.random.key(3), 12))(p, x[:4]),
        **TOL64,
    )


def _layouts_cnn():
    """An NCHW dilated stride-1 convolution with asymmetric padding (output NHWC), then a strided NHWC convolution
    with a bias, a per-channel scale (a fallback leaf) and a dense head. Input (N, 2, 7, 6)."""
    ks = jax.random.split(jax.random.key(30), 5)
    p = {
        "k1": jax.random.normal(ks[0], (3, 2, 3, 2)) / 4,  # OIHW
        "k2": jax.random.normal(ks[1], (3, 3, 3, 4)) / 5,  # HWIO
        "b2": 0.1 * jax.random.normal(ks[2], (4,)),
        "s": 1 + 0.1 * jax.random.normal(ks[3], (4,)),
        "V": jax.random.normal(ks[4], (3 * 3 * 4, 3)) / 6,
    }

    def f(q, x):
        h = jax.lax.conv_general_dilated(
            x, q["k1"], (1, 1), ((1, 2), (0, 1)), rhs_dilation=(2, 1), dimension_numbers=("NCHW", "OIHW", "NHWC")
        )  # (N, 6, 5, 3)
        h = jnp.tanh(h)
        h = jax.lax.conv_general_dilated(h, q["k2"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jnp.tanh((h + q["b2"][None, None, None, :]) * q["s"][None, None, None, :])  # (N, 3, 3, 4)
        return h.reshape(h.shape[0], -1) @ q["V"]

    return f, p


def test_convolution_strategies_agree_with_oracle(monkeypatch):
    """The structured factors under either convolution strategy (every convolution as patches @ filter, or every
    one native with its patches sliced from the recorded input; the default mixes them per layer and backend) are
    the same numbers (same patch feature order), and their per-example gradients give the float64 oracle's trNTK⁰."""
    from jaxcompare.ntk._structured import _factors, analyze, factors
    from jaxcompare.ntk._structured._contract import _per_example_grads

    f, p = _layouts_cnn()
    x = jax.random.normal(jax.random.key(1), (3, 2, 7, 6))
    oracle = oracle_kernels(f, p, x, x)["trntk0"]
    plan = analyze(f, p, (2, 7, 6), x.dtype)

    out = []
    for patches in (True, False):
        monkeypatch.setattr(_factors, "prefer_patches", lambda params, backend=None, v=patches: v)

        def fac(q, xx):  # a new function per strategy: jax's trace and compile caches are keyed by it
            a, g, j = factors(plan, q, xx, summed=False)
            grads = [jnp.swapaxes(_per_example_grads(aa, gg), 1, 2).reshape(xx.shape[0], 3, -1) for aa, gg in zip(a, g)]
            grads = jnp.concatenate(grads + list(j), axis=-1)  # (N, C, P)
            return a, g, jnp.einsum("icp,jcp->ij", grads, grads)

        jaxpr = str(jax.make_jaxpr(fac)(p, x))
        assert ("conv_general_dilated" in jaxpr) != patches  # the strategy really is the one under test
        out.append(jax.jit(fac)(p, x))
        np.testing.assert_allclose(out[-1][2], oracle, **TOL64)
    for u, v in zip(jax.tree_util.tree_leaves(out[0][:2]), jax.tree_util.tree_leaves(out[1][:2])):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def _primitives(jaxpr) -> set:
    """Names of every primitive in a jaxpr, sub-jaxprs (loops, calls) included."""
    out = set()
    for e in jaxpr.eqns:
        out.add(e.primitive.name)
        for v in e.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out |= _primitives(inner)
    return out


def test_prepared_tables_are_built_once_and_give_the_same_features(monkeypatch):
    """project_gradients builds the structured sketch's hash tables once (``prepared``), not inside every block's
    program: a prepared projection's block program has no sort (the tables' permutations), an unprepared one has;
    the features are the same (bit-identical in one call; in blocks of 3, to rounding); tables prepared for another
    input shape are refused."""
    f, p = mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (10, 5), jnp.float64)
    proj = jc.structured_projection(jax.random.key(2), 16)
    ready = proj.prepared(f, p, x)
    assert ready.tables is not None and proj.tables is None
    features = lambda pr, xb: pr.features(f, p, xb)  # noqa: E731
    assert "sort" in _primitives(jax.make_jaxpr(features)(proj, x).jaxpr)
    assert "sort" not in _primitives(jax.make_jaxpr(features)(ready, x).jaxpr)
    features = jax.jit(features)  # compiled whole: op-by-op dispatch of the sketch took 3x longer
    want = np.asarray(features(proj, x))
    np.testing.assert_array_equal(np.asarray(features(ready, x)), want)
    from jaxcompare.ntk._sketch import StructuredProjection

    calls = []
    real = StructuredProjection.prepared
    monkeypatch.setattr(StructuredProjection, "prepared", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    blocks = np.asarray(jc.project_gradients(f, p, x, proj, block_size=3))  # other batch shapes: other rounding
    assert len(calls) == 1  # once for its 4 blocks
    np.testing.assert_allclose(blocks, want, rtol=1e-12, atol=1e-14)
    f2, p2 = mlp(jax.random.key(0), d_in=6)
    with pytest.raises(ValueError, match="prepared for another model or input shape"):
        ready.features(f2, p2, jnp.ones((4, 6)))
