"""Per-layer spectral analysis (jaxcompare.spectra.analyze_params) against float64 NumPy oracles, closed forms and a
naive power-law scan written here. Statistical tests use fixed seeds; the false-failure probability for a random
seed is stated on each."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompare.spectra as S


def _np_eigs(W):
    W = np.asarray(W, np.float64)
    return np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / max(W.shape))


def _naive_data_ks_scan(x, min_tail):
    """xmin by the KS distance at the data points (plfit: cx = (0:n-1)/n), every sample value a candidate."""
    x = np.sort(np.asarray(x, np.float64))
    best = None
    for i in range(x.size - min_tail + 1):
        tail = x[i:]
        a = 1 + tail.size / np.sum(np.log(tail / x[i]))
        D = np.max(np.abs(1 - (tail / x[i]) ** (1 - a) - np.arange(tail.size) / tail.size))
        if best is None or D < best[2]:
            best = (a, x[i], D, tail.size)
    return best


def _spiked(rng, n, m, thetas, sigma=1.0):
    """σ·G + Σ θ_i √N σ u_i v_iᵀ (orthonormal u, v): WᵀW/N has outliers σ²(1+θ²)(c+θ²)/θ² for θ > c^{1/4}."""
    G = rng.standard_normal((n, m))
    U = np.linalg.qr(rng.standard_normal((n, len(thetas))))[0]
    V = np.linalg.qr(rng.standard_normal((m, len(thetas))))[0]
    return sigma * (G + np.sqrt(n) * (U * np.asarray(thetas)) @ V.T)


def test_eigenvalues_and_stable_rank_match_numpy_svd_float64():
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.standard_normal((120, 70))}, "b": {"kernel": rng.standard_t(3, (40, 90))}}
    res = S.analyze_params(params)
    for p, W in (("a/kernel", params["a"]["kernel"]), ("b/kernel", params["b"]["kernel"])):
        lam = res.eigenvalues[p]
        assert lam.dtype == np.float64 and lam.shape == (min(W.shape),)
        np.testing.assert_allclose(lam, _np_eigs(W), rtol=1e-10, atol=1e-12 * lam.max())
        row = res.row(p)
        assert (row["n"], row["m"]) == (max(W.shape), min(W.shape))
        sr = np.linalg.norm(W, "fro") ** 2 / np.linalg.norm(W, 2) ** 2
        assert row["stable_rank"] == pytest.approx(sr, rel=1e-10)
        assert row["lambda_max"] == pytest.approx(np.linalg.norm(W, 2) ** 2 / max(W.shape), rel=1e-10)


def test_float32_params_keep_dtype():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((100, 60))
    res = S.analyze_params({"w": W.astype(np.float32)})
    assert res.eigenvalues["w"].dtype == np.float32
    np.testing.assert_allclose(res.eigenvalues["w"], _np_eigs(W), rtol=2e-4, atol=1e-5)


def test_conv_kernel_matrix_conventions():
    rng = np.random.default_rng(2)
    K = rng.standard_normal((3, 3, 8, 16))  # flax (kh, kw, cin, cout)
    # flatten: the im2col matrix M[(i, j, ci), co] = K[i, j, ci, co], shape (kh·kw·cin, cout)
    M = np.empty((72, 16))
    for i in range(3):
        for j in range(3):
            for ci in range(8):
                M[(i * 3 + j) * 8 + ci] = K[i, j, ci]
    flat = S.analyze_params({"conv": K}, min_dim=8)
    np.testing.assert_allclose(flat.eigenvalues["conv"], _np_eigs(M), rtol=1e-10)
    assert flat.rows[0]["matrix"] == "conv flatten" and (flat.rows[0]["n"], flat.rows[0]["m"]) == (72, 16)
    # slices: the 9 matrices K[i, j] of shape (cin, cout), eigenvalues pooled
    sl = S.analyze_params({"conv": K}, conv="slices", min_dim=8)
    pooled = np.sort(np.concatenate([_np_eigs(K[i, j]) for i in range(3) for j in range(3)]))
    np.testing.assert_allclose(sl.eigenvalues["conv"], pooled, rtol=1e-10)
    assert sl.rows[0]["n_matrices"] == 9 and sl.rows[0]["matrix"] == "conv slices"
    # matrix_fn overrides (e.g. a DenseGeneral kernel (d, heads, head_dim) -> (d, heads·head_dim))
    Q = rng.standard_normal((32, 4, 8))
    mf = S.analyze_params({"q": Q}, matrix_fn=lambda path, leaf: np.reshape(leaf, (32, 32)))
    np.testing.assert_allclose(mf.eigenvalues["q"], _np_eigs(Q.reshape(32, 32)), rtol=1e-10)


@pytest.mark.parametrize("seed, k", [(0, 1), (1, 3), (2, 5)])
def test_mp_edge_and_outlier_count_on_spiked_gaussian(seed, k):
    # Pure noise part: P(λ_{k+1} > threshold) ≈ 1 % (threshold = TW₁'s 99 % quantile on Johnstone's scale); the
    # spikes θ = 2..3 sit at ≥ 6.9σ², far above λ₊ = 2.91σ² and the threshold: false-failure ≈ 1 % per case.
    rng = np.random.default_rng(seed)
    n, m, sigma = 600, 300, 0.2
    thetas = np.linspace(2.0, 3.0, k)
    W = _spiked(rng, n, m, thetas, sigma)
    row = S.analyze_params({"w": W}).row("w")
    c = m / n
    assert row["mp_sigma2"] == pytest.approx(sigma**2, rel=0.03)
    assert row["mp_edge"] == pytest.approx(sigma**2 * (1 + np.sqrt(c)) ** 2, rel=0.03)
    # finite-size threshold: a Tracy–Widom margin of order N^{-2/3} above the edge
    assert 0 < row["outlier_threshold"] - row["mp_edge"] < 5 * sigma**2 * n ** (-2 / 3) * (1 + np.sqrt(c)) ** 2
    assert row["n_outliers"] == k
    lam = _np_eigs(W)
    pred = sigma**2 * (1 + thetas**2) * (c + thetas**2) / thetas**2  # Benaych-Georges & Nadakuditi (2012)
    np.testing.assert_allclose(lam[-k:], np.sort(pred), rtol=0.05)


def test_pure_noise_has_no_outliers():
    # false-failure ≈ 1 % per matrix for a random seed (TW₁ 99 % quantile); 4 fixed seeds here
    for seed in range(4):
        W = np.random.default_rng(10 + seed).standard_normal((500, 200))
        assert S.analyze_params({"w": W}).row("w")["n_outliers"] == 0


def test_powerlaw_alpha_closed_form_and_xmin_against_naive_scan():
    # eigenvalues of a heavy-tailed (Student-t, 3 dof) matrix: xmin/alpha equal to a naive data-point KS scan
    rng = np.random.default_rng(4)
    W = rng.standard_t(3, (300, 150))
    row = S.analyze_params({"w": W}, max_candidates=None).row("w")
    a, xmin, D, nt = _naive_data_ks_scan(_np_eigs(W), 10)
    assert row["xmin"] == pytest.approx(xmin, rel=1e-10) and row["n_tail"] == nt
    assert row["alpha"] == pytest.approx(a, rel=1e-8) and row["ks"] == pytest.approx(D, rel=1e-8)
    assert row["alpha_sigma"] == pytest.approx((a - 1) / np.sqrt(nt), rel=1e-8)


def test_powerlaw_fit_on_known_continuous_power_law():
    # x = xmin (1 − u)^{-1/(α−1)}: with the whole sample as tail the fit is the closed-form MLE (Clauset eq. 3.1);
    # with a free xmin, |α̂ − α| < 4σ fails with probability ≈ 6e-5 for a random seed (asymptotic normality).
    rng = np.random.default_rng(5)
    alpha, xmin = 2.7, 0.5
    x = xmin * (1 - rng.uniform(size=4000)) ** (-1 / (alpha - 1))
    whole = S.powerlaw_fit(x, min_tail=x.size)
    assert float(whole.alpha) == pytest.approx(1 + x.size / np.sum(np.log(x / x.min())), rel=1e-10)
    free = S.powerlaw_fit(x)
    assert abs(float(free.alpha) - alpha) < 4 * float(free.sigma)


@pytest.mark.slow
def test_bootstrap_p_value_needs_key_and_is_reproducible():
    rng = np.random.default_rng(6)
    params = {"w": rng.standard_t(3, (200, 100))}
    no_key = S.analyze_params(params).row("w")
    assert np.isnan(no_key["p_value"]) and "no bootstrap" in no_key["note"]
    r1 = S.analyze_params(jax.random.key(0), params, n_boot=20, boot_candidates=50).row("w")
    r2 = S.analyze_params(jax.random.key(0), params, n_boot=20, boot_candidates=50).row("w")
    assert 0.0 <= r1["p_value"] <= 1.0 and r1["p_value"] == r2["p_value"] and r1["note"] == ""
    assert r1["alpha"] == no_key["alpha"]


def test_skips_table_and_serialization():
    rng = np.random.default_rng(7)
    params = {"Dense_0": {"kernel": rng.standard_normal((64, 32)), "bias": np.zeros(32)},
              "tiny": rng.standard_normal((4, 3)), "zero": np.zeros((20, 20)), "step": np.int32(3),
              "orth": np.linalg.qr(rng.standard_normal((40, 40)))[0]}  # fmt: skip
    res = S.analyze_params(params)
    skipped = {s["path"]: s["reason"] for s in res.skipped}
    assert set(skipped) == {"Dense_0/bias", "tiny", "zero", "step"}
    assert "1-D" in skipped["Dense_0/bias"] and "min_dim" in skipped["tiny"] and "zero" in skipped["zero"]
    orth = res.row("orth")  # all singular values equal: no tail to fit, said in the note (not a silent NaN)
    assert np.isnan(orth["alpha"]) and "no power-law fit" in orth["note"]
    d = json.loads(json.dumps(res.to_dict()))
    assert [r["path"] for r in d["layers"]] == ["Dense_0/kernel", "orth"] and len(d["eigenvalues"]["orth"]) == 40
    header, rows = S.report_rows(res)
    assert len(rows) == 2 and all(len(r) == len(header) for r in rows)
    assert "Dense_0/kernel" in S.format_report(res) and "skipped:" in S.format_report(res)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            res.to_pandas()
    else:
        assert list(res.to_pandas()["path"]) == ["Dense_0/kernel", "orth"]


def test_bad_input_errors():
    W = np.random.default_rng(8).standard_normal((30, 20))
    with pytest.raises(ValueError, match=r"params\['b'\]\['kernel'\].*NaN"):
        S.analyze_params({"b": {"kernel": np.where(np.eye(30, 20) > 0, np.nan, W)}})
    with pytest.raises(ValueError, match="empty"):
        S.analyze_params({})
    with pytest.raises(TypeError, match="'cfg' must be an array"):
        S.analyze_params({"w": W, "cfg": "relu"})
    with pytest.raises(TypeError, match="key"):
        S.analyze_params({"w": W}, jax.random.key(0))  # (params, key): the key comes first
    with pytest.raises(ValueError, match="no weight matrix"):
        S.analyze_params({"bias": np.ones(10)})
    with pytest.raises(ValueError, match="conv"):
        S.analyze_params({"w": W}, conv="im2row")
    with pytest.raises(TypeError, match="positional"):
        S.analyze_params()
    with pytest.raises(ValueError, match="matrix_fn"):
        S.analyze_params({"w": W}, matrix_fn=lambda p, x: np.ravel(x))
    with pytest.raises(TypeError, match="LayerSpectra"):
        S.report_rows({"w": W})


def test_plot_layer_spectra(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(9)
    res = S.analyze_params({"a": rng.standard_normal((200, 100)), "b": _spiked(rng, 200, 100, [3.0])})
    fig = S.plot_layer_spectra(res, path=tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
        xs = [ln.get_xdata() for ln in ax.get_lines() if "MP fit" in ln.get_label()][0]
        assert xs.max() <= res.row(ax.get_title().split("\n")[0])["mp_edge"] * (1 + 1e-12)  # no tail past the edge
    with pytest.raises(ValueError, match="not analysed"):
        S.plot_layer_spectra(res, layers=["c"])


def test_gaussian_constants_refuses_orders_past_the_finite_rule():
    assert np.isfinite(S.gaussian_constants("tanh", order=370).b)
    for order in (371, 372):
        with pytest.raises(ValueError, match="order must be <= 370"):
            S.gaussian_constants("tanh", order=order)


def test_jnp_params_and_path_names():
    rng = np.random.default_rng(11)
    params = {"layers": [{"w": jnp.asarray(rng.standard_normal((50, 20)))}]}
    res = S.analyze_params(params)
    assert res.rows[0]["path"] == "layers/0/w" and res.rows[0]["group"] == "layers/0"


def test_powerlaw_fit_matches_pinned_powerlaw_package_fit():
    # Pinned from benchmarks/bench_spectra.py (powerlaw 2.0.0, Fit(x, discrete=False,
    # parameter_ranges={"alpha": [1, None]})) on the eigenvalues of a Student-t(2.5) 800×800 matrix, seed 0.
    rng = np.random.default_rng(0)
    rng.standard_t(3, (1000, 500))  # the benchmark's first spectrum, drawn first from the same stream
    lam = _np_eigs(rng.standard_t(2.5, (800, 800)))
    fit = S.powerlaw_fit(lam, min_tail=2, max_candidates=None)
    assert float(fit.xmin) == pytest.approx(13.8512042188923, rel=1e-9)
    assert float(fit.alpha) == pytest.approx(5.3480187877954775, rel=1e-9)
    assert int(fit.n_tail) == 47
    assert float(fit.ks) == pytest.approx(0.04638111882457496, rel=1e-8)


def test_rank_deficient_layer_gets_no_mp_fit_to_rounding_noise():
    """A rank-20 256×64 layer: 44 of its 64 eigenvalues are rounding noise (~1e-13 of λmax). The MP bulk was fitted
    to them (σ² = 3e-13) and the 20 real eigenvalues (and some noise) counted as outliers (22 > rank). Oracle: the
    rank of the factors; NumPy's eigenvalues in float64."""
    rng = np.random.default_rng(0)
    L = (rng.standard_normal((256, 20)) @ rng.standard_normal((20, 64))).astype(np.float32)
    row = S.analyze_params({"l": L}).rows[0]
    assert np.isnan(row["mp_sigma2"]) and row["n_outliers"] == -1 and "no MP fit" in row["note"]
    lam = np.linalg.eigvalsh(L.astype(np.float64).T @ L / 256)
    assert np.sum(lam > 1e-8 * lam[-1]) == 20
    full = rng.standard_normal((256, 64)).astype(np.float32)  # full rank: fitted as before
    assert S.analyze_params({"w": full}).rows[0]["n_outliers"] == 0


def test_half_precision_layers_and_samples_are_analysed_in_float32():
    """float16/bfloat16 layers: the SVD (which has no half-precision kernel) and the tail fit run in float32, on the
    rounded values. Oracle: NumPy's float64 eigenvalues of the rounded matrix; the power-law fit of the rounded
    sample in float32 (which `test_powerlaw_*` check against float64 scans). In bfloat16 the fit refused every
    tail ("numerically constant") or counted ranks past 256 wrongly."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((96, 48)).astype(np.float32)
    for dt in (jnp.float16, jnp.bfloat16):
        Wh = jnp.asarray(W, dt)
        res = S.analyze_params({"w": Wh})
        lam = np.linalg.eigvalsh(
            np.asarray(Wh.astype(jnp.float32), np.float64).T @ np.asarray(Wh.astype(jnp.float32), np.float64) / 96
        )
        assert res.eigenvalues["w"].dtype == np.float32
        np.testing.assert_allclose(res.eigenvalues["w"], lam, rtol=1e-4, atol=1e-5 * lam[-1])
        x = jnp.asarray(rng.pareto(3.0, 3000) + 1.0, dt)
        got, ref = S.powerlaw_fit(x), S.powerlaw_fit(np.asarray(x.astype(jnp.float32)))
        assert got.alpha.dtype == jnp.float32
        np.testing.assert_array_equal([float(got.alpha), int(got.n_tail)], [float(ref.alpha), int(ref.n_tail)])


def test_matrix_fn_results_are_checked():
    W = np.random.default_rng(2).standard_normal((30, 20)).astype(np.float32)
    cases = [
        (lambda p, l: np.full((30, 20), np.nan), ValueError, r"matrix_fn\('w', \.\.\.\)'s matrix must be finite"),
        (lambda p, l: np.zeros((0, 20, 20)), ValueError, "must not be empty"),
        (lambda p, l: "abc", TypeError, "must be a numeric array"),
        (lambda p, l: np.ones(3), ValueError, "2-D matrix, a 3-D stack"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            S.analyze_params({"w": W}, matrix_fn=fn)


def test_layers_whose_eigenvalues_leave_float32_are_skipped_with_the_reason():
    """A float32 layer ×1e-25 (×1e30) has eigenvalues s²/N that underflow to 0 (overflow to inf): it was reported
    with λmax 0 and no fit, and the CLI's figure then crashed after writing half its report. Oracle: the float64
    eigenvalues of the same matrix (1e-50 scale, 1e60 scale) are outside float32's range."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    good = rng.standard_normal((64, 32)).astype(np.float32)
    params = {"a": good, "tiny": (good * 1e-25).astype(np.float32), "huge": (good * 1e30).astype(np.float32)}
    lam = np.linalg.eigvalsh(params["tiny"].astype(np.float64).T @ params["tiny"].astype(np.float64) / 64)
    assert lam[-1] < np.finfo(np.float32).tiny
    res = S.analyze_params(params)
    assert [r["path"] for r in res.rows] == ["a"]
    reasons = {s["path"]: s["reason"] for s in res.skipped}
    assert "leave the range of float32" in reasons["tiny"] and "leave the range of float32" in reasons["huge"]
    S.plot_layer_spectra(res)


def _layer_map(module, variables, in_shape) -> np.ndarray:
    """The linear map a flax layer applies, read off by applying it to the unit basis (bias zeroed): the
    ``(prod(in_shape), prod(out_shape))`` matrix, in float64."""
    d = int(np.prod(in_shape))
    basis = np.eye(d).reshape((d, *in_shape))
    zeroed = jax.tree_util.tree_map_with_path(
        lambda kp, a: jnp.zeros_like(a) if "bias" in jax.tree_util.keystr(kp) else a, variables
    )
    return np.asarray(module.apply(zeroed, jnp.asarray(basis)), np.float64).reshape(d, -1)


def test_attention_kernels_with_a_heads_axis_are_the_maps_the_layer_applies():
    """flax's SelfAttention keeps query/key/value as (d, heads, head_dim) and out as (heads, head_dim, d). They were
    read as 1-D convolutions (d·heads, head_dim), a matrix the layer never applies. Oracle: the layer's own linear
    map, read off by applying the DenseGeneral module to the unit basis, and NumPy's SVD in float64."""
    import flax.linen as nn

    d, heads, head_dim = 48, 4, 12
    attn = nn.SelfAttention(num_heads=heads, qkv_features=heads * head_dim, out_features=d, param_dtype=jnp.float64)
    params = attn.init(jax.random.key(0), jnp.ones((1, 3, d), jnp.float64))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)  # not iid-shaped init
    tree = {"Block_0": {"SelfAttention_0": params}}
    merged = S.analyze_params(tree, min_dim=8)
    split = S.analyze_params(tree, heads="split", min_dim=8)
    for name, in_shape in (("query", (d,)), ("key", (d,)), ("value", (d,)), ("out", (heads, head_dim))):
        path = f"Block_0/SelfAttention_0/{name}/kernel"
        features = (heads, head_dim) if name != "out" else d
        axis = -1 if name != "out" else (-2, -1)
        dense = nn.DenseGeneral(features=features, axis=axis, param_dtype=jnp.float64)
        M = _layer_map(dense, {"params": params[name]}, in_shape)  # (d, H·hd) or (H·hd, d)
        row = merged.row(path)
        assert row["matrix"] == "heads merged" and (row["n"], row["m"], row["n_matrices"]) == (d, heads * head_dim, 1)
        np.testing.assert_allclose(merged.eigenvalues[path], _np_eigs(M), rtol=1e-10, atol=1e-12)
        # per head: the columns (rows for out) of head h, eigenvalues pooled
        blocks = np.split(M, heads, axis=1 if name != "out" else 0)
        pooled = np.sort(np.concatenate([_np_eigs(b) for b in blocks]))
        assert split.row(path)["matrix"] == "heads split" and split.row(path)["n_matrices"] == heads
        np.testing.assert_allclose(split.eigenvalues[path], pooled, rtol=1e-10, atol=1e-12)
    # a 1-D convolution keeps the patch matrix; "q" outside an attention module is not taken for a projection
    conv = {"Conv_0": {"kernel": rng.standard_normal((3, 16, 24))}, "q": {"kernel": rng.standard_normal((3, 16, 24))}}
    res = S.analyze_params(conv, min_dim=8)
    for p in ("Conv_0/kernel", "q/kernel"):
        assert res.row(p)["matrix"] == "conv flatten"
        np.testing.assert_allclose(res.eigenvalues[p], _np_eigs(conv[p.split("/")[0]]["kernel"].reshape(48, 24)))
    wq = rng.standard_normal((16, 2, 12))
    inside = S.analyze_params({"attn": {"q": {"kernel": wq}}}, min_dim=8)
    assert inside.row("attn/q/kernel")["matrix"] == "heads merged"
    np.testing.assert_allclose(inside.eigenvalues["attn/q/kernel"], _np_eigs(wq.reshape(16, 24)), rtol=1e-10)
    with pytest.raises(ValueError, match="heads"):
        S.analyze_params(tree, heads="per-head")


def test_nnx_state_paths_end_at_the_variable():
    """nnx.state(model) leaves sit under a Variable's ``value`` attribute: the path is the variable's
    ("query/kernel"), so that the value projection's kernel is not mistaken for the leaf ``value``."""
    from flax import nnx

    m = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False, rngs=nnx.Rngs(0))
    res = S.analyze_params(nnx.state(m, nnx.Param), min_dim=8)
    assert sorted(r["path"] for r in res.rows) == ["key/kernel", "out/kernel", "query/kernel", "value/kernel"]
    w = np.asarray(m.value.kernel[...], np.float64).reshape(32, 32)
    assert res.row("value/kernel")["matrix"] == "heads merged"
    np.testing.assert_allclose(res.eigenvalues["value/kernel"], _np_eigs(w), rtol=1e-5, atol=1e-7)
    # a (heads, head_dim) bias is 2-D but no map: skipped (with 12 heads of 64 it was analysed as a 12 × 64 matrix)
    skipped = {r["path"]: r["reason"] for r in res.skipped}
    assert skipped["query/bias"].startswith("bias") and skipped["out/bias"].startswith("1-D")
    # a checkpoint written by other tools from nnx.state keeps the box: ".../kernel/value" is still a query kernel
    boxed = {"query": {"kernel": {"value": np.asarray(m.query.kernel[...])}}}
    boxed["query"]["bias"] = {"value": np.zeros((4, 8), np.float32)}
    old = S.analyze_params(boxed, min_dim=8)
    assert old.row("query/kernel/value")["matrix"] == "heads merged"
    assert [r["path"] for r in old.skipped] == ["query/bias/value"]


def test_layers_stacked_by_scan_are_analysed_one_by_one():
    """nn.scan stacks a layer's parameters over a leading axis: the Dense kernels of 4 layers became one (4, 48, 48)
    leaf, analysed as a single (192, 48) matrix. With stacked= each layer is a row; without it a warning names the
    leaf. Oracle: NumPy's SVD of each layer's own kernel, in float64."""
    import warnings

    import flax.linen as nn

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return jnp.tanh(nn.Dense(48, param_dtype=jnp.float64)(x)), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)
            x, _ = scan(name="ScanLayer")(x, None)
            return nn.Dense(10, param_dtype=jnp.float64)(x)

    p = Net().init(jax.random.key(0), jnp.ones((1, 48), jnp.float64))["params"]
    stack = np.asarray(p["ScanLayer"]["Dense_0"]["kernel"])
    with pytest.warns(UserWarning, match=r"ScanLayer/Dense_0/kernel of shape \(4, 48, 48\) looks stacked over 4"):
        whole = S.analyze_params(p)
    assert [r["path"] for r in whole.rows] == ["Dense_0/kernel", "ScanLayer/Dense_0/kernel"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once stacked= is given
        res = S.analyze_params(p, stacked="ScanLayer")
    paths = [r["path"] for r in res.rows]
    assert paths == ["Dense_0/kernel"] + [f"ScanLayer/Dense_0/kernel[{j}]" for j in range(4)]
    for j in range(4):
        row = res.row(f"ScanLayer/Dense_0/kernel[{j}]")
        assert (row["shape"], row["matrix"], row["group"]) == ((48, 48), "dense", "ScanLayer/Dense_0")
        np.testing.assert_allclose(res.eigenvalues[row["path"]], _np_eigs(stack[j]), rtol=1e-10, atol=1e-12)
    assert all(s["reason"].startswith(("bias", "1-D")) for s in res.skipped)  # the (4, 48) bias: 4 biases
    by_fn = S.analyze_params(p, stacked=lambda path: path.startswith("ScanLayer/"))
    assert [r["path"] for r in by_fn.rows] == paths
    with pytest.raises(ValueError, match="matched no parameter"):
        S.analyze_params(p, stacked="NoSuchBlock")
    with pytest.raises(ValueError, match="regular expression"):
        S.analyze_params(p, stacked="(")
    with pytest.raises(TypeError, match="stacked must be"):
        S.analyze_params(p, stacked=3)
