"""Projected per-example gradients (``project_gradients``, ``structured_projection``, ``projected_kernel``):
unbiasedness and accuracy against the float64 Jacobian oracle (tests/ntk_models.py), the accuracy of a dense
Rademacher projection at equal dimension, the error estimate, block invariance and the resumable on-disk store.

Statistical tests state their false-failure probability (normal approximation of means over independent keys)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import flax_cnn, mlp, oracle_jacobian, oracle_kernels, shared_weight

import jaxcompare as jc
from jaxcompare.ntk._sketch import _hash_tables, _sketch


def _x(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def test_sketch_of_a_vector_matches_a_naive_countsketch():
    # oracle: the explicit K x P CountSketch matrix built from the hash tables with NumPy, applied to a vector
    p, k = 37, 8
    buckets, signs = _hash_tables(jax.random.key(0), p, k)
    buckets, signs = np.asarray(buckets), np.asarray(signs)
    assert buckets.shape == (p,) and buckets.min() >= 0 and buckets.max() < k and set(signs) == {-1, 1}
    assert np.bincount(buckets, minlength=k).max() <= -(-p // k)  # a permutation modulo k: balanced buckets
    s = np.zeros((k, p))
    s[buckets, np.arange(p)] = signs
    v = np.asarray(_x(1, (3, p)), np.float64)
    np.testing.assert_allclose(
        np.asarray(_sketch(jnp.asarray(v), jnp.asarray(buckets), jnp.asarray(signs), k)),
        v @ s.T,
        rtol=1e-12,
        atol=1e-12,
    )
    assert np.all(np.abs(s).sum(0) == 1)  # one nonzero ±1 per column


@pytest.mark.parametrize("model", ["mlp", "shared"])
def test_unbiased_kernel(model):
    """E[<φ_c(x_i), φ_c(x_j)>] = trNTK⁰: the mean over 300 keys is within 4.5 standard errors of the oracle on each
    of the 15 entries (false failure < 15 · 7e-6 ≈ 1e-4). The shared-weight model exercises the fallback leaves."""
    f, p = mlp(jax.random.key(0)) if model == "mlp" else shared_weight(jax.random.key(0))
    x = _x(1, (5, 5 if model == "mlp" else 6))
    exact = oracle_kernels(f, p, x, x)["trntk0"]

    def k0(key):
        phi = jc.structured_projection(key, 16).features(f, p, x)
        return jnp.einsum("ick,jck->ij", phi, phi)

    ks = np.asarray(jax.jit(jax.vmap(k0))(jax.random.split(jax.random.key(2), 300)))
    iu = np.triu_indices(5)
    t = (ks.mean(0) - exact)[iu] / (ks.std(0, ddof=1)[iu] / np.sqrt(300))
    assert np.all(np.abs(t) < 4.5), t
    # and not trivially: a single key is noticeably off
    assert np.abs(ks[0] - exact).max() > 1e-3 * np.abs(exact).max()


@pytest.mark.slow
def test_accuracy_matches_dense_rademacher_at_equal_dim():
    """mean |Δcos| of the normalized proj-trNTK against the exact trNTK (off-diagonal), 10 keys each, dim = 64, on a
    CNN (two convolutions, a dense layer, fused biases; P = 335). The structured sketch's mean error must not exceed
    the dense Rademacher projection's by more than 4 standard errors of the difference (observed spread over the
    keys; false failure ≈ 3e-5 when their errors are equal — the sketch's variance is at most the dense one's)."""
    f, p = flax_cnn(jax.random.key(0))
    x = _x(1, (16, 6, 6, 2))
    exact = oracle_kernels(f, p, x, x)["trntk"]
    iu = np.triu_indices(16, 1)
    errs = {"structured": [], "rademacher": []}
    for s in range(10):
        for kind in errs:
            key = jax.random.key(100 + s)
            proj = jc.structured_projection(key, 64) if kind == "structured" else jc.random_projection(key, 64)
            k = np.asarray(jc.trace_ntk(f, projection=proj)(p, x))
            errs[kind].append(np.abs(k - exact)[iu].mean())
    a, b = np.array(errs["structured"]), np.array(errs["rademacher"])
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert a.mean() - b.mean() < 4 * se, (a.mean(), b.mean(), se)
    assert 0.005 < a.mean() < 0.2  # a real sketch error, of the JL order ~ 1/sqrt(dim)


@pytest.mark.parametrize("kind", ["structured", "rademacher"])
def test_error_estimate_is_calibrated(kind):
    """ProjectedKernel.mean_abs_error predicts the mean |Δcos| against the oracle: over 8 keys the ratio of the mean
    predicted to the mean observed error lies in [0.6, 1.8] (observed spread of the ratio ≈ 0.1; false failure
    < 1e-4 by the normal approximation)."""
    f, p = flax_cnn(jax.random.key(0))
    x = _x(2, (16, 6, 6, 2))
    exact = oracle_kernels(f, p, x, x)["trntk"]
    iu = np.triu_indices(16, 1)
    pred, obs = [], []
    for s in range(8):
        key = jax.random.key(200 + s)
        proj = jc.structured_projection(key, 64) if kind == "structured" else jc.random_projection(key, 64)
        pk = jc.projected_kernel(jc.project_gradients(f, p, x, proj))
        pred.append(float(pk.mean_abs_error))
        obs.append(np.abs(np.asarray(pk.kernel) - exact)[iu].mean())
        assert pk.stderr.shape == (16, 16) and float(jnp.abs(jnp.diag(pk.stderr)).max()) == 0.0
    ratio = np.mean(pred) / np.mean(obs)
    assert 0.6 < ratio < 1.8, ratio


def test_features_equal_explicit_projection_of_oracle_gradients_in_expectation_and_are_linear():
    """Features are a fixed linear map of the gradient: φ of the summed logit equals the sum of the per-class φ
    (exactly), and the pNTK from features is unbiased like the trace (mean over 200 keys within 4.5 standard errors
    of the oracle pNTK; false failure < 1e-4)."""
    f, p = mlp(jax.random.key(3))
    x = _x(4, (4, 5))
    proj = jc.structured_projection(jax.random.key(5), 32)
    phi = jc.project_gradients(f, p, x, proj)
    phis = jc.project_gradients(f, p, x, proj, summed=True)
    np.testing.assert_allclose(phis, phi.sum(1), rtol=1e-12, atol=1e-12)
    g = oracle_jacobian(f, p, x).sum(1)
    exact = g @ g.T / 3

    def pk(key):
        ph = jc.structured_projection(key, 32).features(f, p, x, summed=True)
        return ph @ ph.T / 3

    ks = np.asarray(jax.jit(jax.vmap(pk))(jax.random.split(jax.random.key(6), 200)))
    t = (ks.mean(0) - exact) / (ks.std(0, ddof=1) / np.sqrt(200))
    assert np.all(np.abs(t[np.triu_indices(4)]) < 4.5), t
    kp = jc.pseudo_ntk(f, projection=proj)(p, x)
    np.testing.assert_allclose(kp, np.asarray(phis) @ np.asarray(phis).T / 3, rtol=1e-12)


@pytest.mark.slow
def test_block_invariance_jit_and_dtype():
    f, p = flax_cnn(jax.random.key(0), dtype=jnp.float32)
    x = _x(1, (11, 6, 6, 2)).astype(jnp.float32)
    proj = jc.structured_projection(jax.random.key(7), 32)
    ref = jc.project_gradients(f, p, x, proj, block_size=11)
    assert ref.dtype == jnp.float32 and ref.shape == (11, 3, 32)
    for bs in (4,):
        np.testing.assert_allclose(jc.project_gradients(f, p, x, proj, block_size=bs), ref, rtol=1e-5, atol=1e-5)
    inner = jc.structured_projection(jax.random.key(7), 32, block_size=3)  # blocks inside one jitted call
    np.testing.assert_allclose(jax.jit(lambda pp, xx: inner.features(f, pp, xx))(p, x), ref, rtol=1e-5, atol=1e-5)


def test_disk_store_resumes_and_verifies(tmp_path):
    f, p = mlp(jax.random.key(0))
    x = _x(1, (10, 5))
    proj = jc.structured_projection(jax.random.key(8), 16)
    ref = np.asarray(jc.project_gradients(f, p, x, proj, block_size=4))
    out = jc.project_gradients(f, p, x, proj, block_size=4, path=tmp_path)
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, ref)
    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted(state["blocks"]) == ["0", "1", "2"] and state["complete"]
    # an interrupted run: block 1 lost, block 2 edited, the final file gone -> recomputed, same result
    (tmp_path / "block_000001.npy").unlink()
    b2 = np.load(tmp_path / "block_000002.npy")
    np.save(tmp_path / "block_000002.npy", b2 + 1.0)
    (tmp_path / "features.npy").unlink()
    np.testing.assert_array_equal(jc.project_gradients(f, p, x, proj, block_size=4, path=tmp_path), ref)
    # other data: refused, unless overwrite=True
    with pytest.raises(ValueError, match="fingerprint"):
        jc.project_gradients(f, p, x + 1.0, proj, block_size=4, path=tmp_path)
    out2 = jc.project_gradients(f, p, x + 1.0, proj, block_size=4, path=tmp_path, overwrite=True)
    assert not np.allclose(out2, ref)


def test_validation():
    f, p = mlp(jax.random.key(0))
    x = _x(1, (4, 5))
    proj = jc.structured_projection(jax.random.key(0), 8)
    with pytest.raises(ValueError, match="dim must be even"):
        jc.structured_projection(jax.random.key(0), 9)
    with pytest.raises(ValueError, match="dim"):
        jc.structured_projection(jax.random.key(0), 0)
    with pytest.raises(TypeError, match="key"):
        jc.structured_projection(0, 8)
    with pytest.raises(TypeError, match="projection"):
        jc.project_gradients(f, p, x, "rademacher")
    with pytest.raises(ValueError, match="block_size"):
        jc.project_gradients(f, p, x, proj, block_size=0)
    with pytest.raises(ValueError, match="x1"):
        jc.project_gradients(f, p, x.at[0, 0].set(jnp.nan), proj)
    with pytest.raises(ValueError, match="features1"):
        jc.projected_kernel(jnp.ones((4,)))
    with pytest.raises(ValueError, match="even"):
        jc.projected_kernel(jnp.ones((4, 3, 5)))
    with pytest.raises(ValueError, match="same per-example shape"):
        jc.projected_kernel(jnp.ones((4, 3, 4)), jnp.ones((4, 2, 4)))
    with pytest.raises(ValueError, match="memory_budget"):
        jc.structured_projection(jax.random.key(0), 8, memory_budget="lots")
    keys = jax.random.split(jax.random.key(0), 3)
    for batch in (keys, jax.random.key_data(keys)):  # a batch of keys (typed or legacy uint32): one key, or vmap
        with pytest.raises(ValueError, match=r"one PRNG key, got a batch of keys of shape \(3,\)"):
            jc.structured_projection(batch, 8)
        with pytest.raises(ValueError, match="batch of keys"):
            jc.random_projection(batch, 8)
    with pytest.raises(ValueError, match="kind='sparse' only"):
        jc.random_projection(jax.random.key(0), 8, "rademacher", nnz=3)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        jc.projected_kernel(jnp.ones((4, 3, 4)), normalize="no")
    with pytest.raises(FloatingPointError, match="overflowed float32"):
        jc.projected_kernel(jnp.full((4, 3, 4), 1e20, jnp.float32), normalize=False)


def test_default_budget_is_the_accelerators_memory(monkeypatch):
    """On a GPU or TPU the default budget is half of what the device's allocator may still take (the kernels' arrays
    live there), the planning budget half its limit; a backend without statistics falls back to the host's memory
    (MemTotal read here from /proc/meminfo, independently of the package)."""
    import jaxcompare.ntk._memory as mem

    gib = 2**30

    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    monkeypatch.delenv("JAXCOMPARE_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "local_devices", lambda: [Device({"bytes_limit": 80 * gib, "bytes_in_use": 16 * gib})])
    assert mem.memory_budget() == 32 * gib
    assert mem.memory_budget(0.25) == 16 * gib  # a fraction of the device's free memory
    assert mem.memory_budget("3G") == 3 * gib  # explicit sizes are kept as given
    assert mem.planning_budget() == 40 * gib
    monkeypatch.setattr(jax, "local_devices", lambda: [Device(None)])
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
    assert mem.planning_budget() == total // 2
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # the CPU never asks the device
    monkeypatch.setattr(jax, "local_devices", lambda: [Device({"bytes_limit": 1, "bytes_in_use": 0})])
    assert mem.accelerator_bytes() is None
    assert mem.planning_budget() == total // 2


def test_memory_plan_blocks_or_raises_before_work(monkeypatch):
    """The default exact call estimates its memory first: over the budget it computes in blocks (same kernel as
    the unplanned call and as the float64 oracle), and when not even one block fits it raises with the estimate."""
    f, p = flax_cnn(jax.random.key(0))
    x = _x(1, (12, 6, 6, 2))
    exact = oracle_kernels(f, p, x, x)["trntk"]
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "100K")
    with pytest.warns(RuntimeWarning, match="block by block"):
        k = jc.trace_ntk(f)(p, x)
    np.testing.assert_allclose(k, exact, rtol=1e-10, atol=1e-10)
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "2K")
    with pytest.raises(ValueError, match="memory budget"):
        jc.trace_ntk(f)(p, x)
    monkeypatch.setenv("JAXCOMPARE_MEMORY_BUDGET", "a lot")
    with pytest.raises(ValueError, match="JAXCOMPARE_MEMORY_BUDGET"):
        jc.trace_ntk(f)(p, x)


def _projected_kernel_oracle(f1, f2, normalize):
    """float64 NumPy: the kernel of the whole features and the half-sketch standard error, formed all at once."""
    f1, f2 = (np.asarray(f, np.float64).reshape(f.shape[0], -1, f.shape[-1]) for f in (f1, f2))
    h = f1.shape[-1] // 2

    def kern(u, v):
        k = np.einsum("ick,jck->ij", u, v)
        if not normalize:
            return k
        return k / np.sqrt(np.outer((u * u).sum((1, 2)), (v * v).sum((1, 2))))

    k = kern(f1, f2)
    ka, kb = kern(f1[..., :h], f2[..., :h]), kern(f1[..., h:], f2[..., h:])
    if not normalize:
        ka, kb = 2 * ka, 2 * kb
    return k, np.abs(ka - kb) / 2


@pytest.mark.parametrize("rows", [3, 1024])  # 3: blocks of rows, the last one shifted back (7 = 3 + 3 + 1)
def test_projected_kernel_against_numpy_in_blocks_of_rows(monkeypatch, rows):
    from jaxcompare.ntk import _project_gradients as PG

    monkeypatch.setattr(PG, "_KERNEL_ROWS", rows)
    PG._pk_compute.clear_cache()
    f1, f2 = _x(2, (7, 2, 6)), _x(3, (5, 2, 6))
    for a, b, sym in ((f1, None, True), (f1, f2, False), (f1[:, 0], f2[:, 0], False)):
        for normalize in (True, False):
            pk = jc.projected_kernel(a, b, normalize=normalize)
            k, se = _projected_kernel_oracle(a, a if b is None else b, normalize)
            if sym and normalize:  # the exact diagonal is not an error
                np.fill_diagonal(se, 0.0)
                ms = (se**2).sum() / (7 * 6)
            else:
                ms = (se**2).mean()
            np.testing.assert_allclose(pk.kernel, k, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(pk.stderr, se, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(pk.mean_abs_error, np.sqrt(2 / np.pi * ms), rtol=1e-12)
    PG._pk_compute.clear_cache()


def test_automatic_block_whole_chunks_within_budget():
    """64 examples per call (or all of x) once 16 examples' factors fit the budget, else as many as fit (at least
    one); every size gives the same features."""
    f, p = mlp(jax.random.key(0))
    x = _x(1, (100, 5))
    big = jc.structured_projection(jax.random.key(0), 8, memory_budget="1G")
    assert big.block_for(f, p, x) == 64 and big.block_for(f, p, x[:40]) == 40 and big.block_for(f, p, x[:9]) == 9
    tiny = jc.structured_projection(jax.random.key(0), 8, memory_budget="1K")
    with pytest.warns(RuntimeWarning, match="no room for the structured sketch's factors of one"):
        assert tiny.block_for(f, p, x) == 1
    ref = jc.project_gradients(f, p, x[:40], big)
    with pytest.warns(RuntimeWarning, match="path="):
        np.testing.assert_allclose(jc.project_gradients(f, p, x[:40], tiny), ref, rtol=1e-12, atol=1e-12)
    # features going to disk do not count against the budget: 20 examples' factors fit (whole chunks of 16: the
    # default 64 per call), not the features of all examples too
    per = jc.structured_projection(jax.random.key(0), 8, memory_budget="1G").block_for(f, p, x)
    assert per == 64
    from jaxcompare.ntk import _sketch

    (per_ex, fixed, rows, item) = next(v for v in _sketch._BYTES.values() if v[2] == 3)
    mid = jc.structured_projection(jax.random.key(0), 8, memory_budget=int(fixed + 20 * per_ex + 100))
    xx = _x(2, (50_000, 5))  # the features of 50 000 examples (9.6 MB in float64) exceed this budget
    with pytest.warns(RuntimeWarning, match="no room"):
        assert mid.block_for(f, p, xx) == 1
    assert mid.block_for(f, p, xx, held=False) == 64


def test_accelerator_block_layout_gives_the_same_features(monkeypatch):
    """The accelerator's layout (larger blocks and chunks, several examples folded at once, a remainder fold batch)
    gives the CPU layout's features, and its automatic block is its own maximum; checked here on the CPU by
    selecting that layout. A float64 model so that only the summation order may differ."""
    import jaxcompare.ntk._sketch as sk

    f, p = flax_cnn(jax.random.key(0))
    x = _x(1, (27, 6, 6, 2))
    proj = jc.structured_projection(jax.random.key(7), 32)
    ref = jc.project_gradients(f, p, x, proj)
    assert sk._tuning() == sk._TUNING["cpu"]
    monkeypatch.setitem(sk._TUNING, "cpu", sk._Tuning(max_block=20, chunk=12, fold=5))  # 27 = 20 + 7; 12 = 5+5+2
    jax.clear_caches()  # the layout is read when the features are traced
    big = jc.structured_projection(jax.random.key(7), 32, memory_budget="1G")
    assert big.block_for(f, p, x) == 20 and big.block_for(f, p, x[:9]) == 9
    np.testing.assert_allclose(jc.project_gradients(f, p, x, big), ref, rtol=1e-12, atol=1e-12)


def test_automatic_block_of_an_unhashable_model():
    """A model object that cannot be hashed (``__eq__`` without ``__hash__``) is planned without the memo."""
    f, p = mlp(jax.random.key(0))

    class Model:
        __hash__ = None

        def __eq__(self, other):
            return self is other

        def __call__(self, q, xx):
            return f(q, xx)

    x = _x(1, (20, 5))
    proj = jc.structured_projection(jax.random.key(0), 8, memory_budget="1G")
    assert proj.block_for(Model(), p, x) == proj.block_for(f, p, x) == 20
