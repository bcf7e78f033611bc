"""Output probes (``output_probes=p``): the trace over outputs from p random ±1 combinations of them.

Oracles: float64 Jacobians by forward mode (``ntk_models.oracle_jacobian``) and Hutchinson's variance in closed
form. Statistical tests use t-statistics of the mean over independent keys; thresholds and false-failure
probabilities are stated per test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import _layer_norm, _pre_ln_layer, mlp, oracle_jacobian, tiny_gpt, tiny_resnet

import jaxcompare as jc
from jaxcompare.ntk._probes import ab_layout, probe_matrix


def _projection(kind, key, dim, probes):
    if kind == "structured":
        return jc.structured_projection(key, dim, output_probes=probes)
    return jc.random_projection(key, dim, kind, output_probes=probes)


def _per_token_gpt(key, vocab=5, seq=3):
    """tiny_gpt with the logits of every position: outputs (N, seq, vocab), seq·vocab outputs to trace over."""
    _, params = tiny_gpt(key, vocab=vocab, seq=seq)

    def apply_fn(p, tokens):
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        h = p["emb"][tokens] + p["pos"][None, :t]
        h, _ = jax.lax.scan(lambda h, lp: (_pre_ln_layer(h, lp, 2, causal), None), h, p["layers"])
        return _layer_norm(h, p["lnf_s"], p["lnf_b"]) @ p["emb"].T

    return apply_fn, params


def _data(model):
    if model == "mlp":
        f, p = mlp(jax.random.key(0), n_classes=6)
        return f, p, jax.random.normal(jax.random.key(1), (5, 5))
    f, p = _per_token_gpt(jax.random.key(2))
    return f, p, jax.random.randint(jax.random.key(3), (4, 3), 0, 5)


@pytest.mark.parametrize(
    "model,kind", [("mlp", "structured"), ("mlp", "rademacher"), ("mlp", "sparse"), ("per-token gpt", "structured")]
)
def test_unbiased_for_the_trace_over_outputs(model, kind):
    """Mean over S = 300 keys of ``Σ_k <φ_k(x_i), φ_k(x_j)>`` equals the float64 trNTK⁰ (per-token logits: the trace
    over positions and classes, 15 outputs): every entry's |t| < 5. Per entry P(|t_299| > 5) ≈ 1e-6, at most 15
    distinct entries per kernel: false failure < 1e-4."""
    f, p, x = _data(model)
    jac = oracle_jacobian(f, p, x)
    jac = jac.reshape(jac.shape[0], -1, jac.shape[-1]) if jac.ndim > 3 else jac  # (N, L·C, P)
    exact = np.einsum("icp,jcp->ij", jac, jac)
    s = 300

    def k0(key):
        phi = _projection(kind, key, 32, 4).features(
            lambda q, xx: f(q, xx).reshape(xx.shape[0], -1), p, x
        )  # the canonical (N, outputs) model, as project_gradients builds it
        return jnp.einsum("ick,jck->ij", phi, phi)

    ks = np.asarray(jax.jit(jax.vmap(k0))(jax.random.split(jax.random.key(4), s)))
    t = np.abs(ks.mean(0) - exact) / (ks.std(0, ddof=1) / np.sqrt(s))
    assert t.max() < 5, t.max()
    assert np.all(ks.std(0) > 0)


def test_variance_is_hutchinsons_when_the_projection_is_nearly_exact():
    """With a structured sketch of dim 4096 on a 73-parameter MLP (its own variance a few per cent of the probes'),
    the variance over 400 keys of the probed trNTK⁰ (p = 2 and 4) is Hutchinson's closed form
    ``(1/p) Σ_{c≠c'} (A_cc'² + A_cc' A_c'c)``, ``A = J(x_i) J(x_j)ᵀ``: the A/B layout (two sets of p/2 probes, one
    per half of the features) has the variance of p probes. Summed over the upper triangle, ratio in [0.8, 1.3]
    (the sample variance of 400 draws has ~7% relative sd; measured 0.95–1.06 with a structured sketch of dim
    4096, 0.96–1.14 with a dense Rademacher projection of dim 2048). Had both halves used one set of p/2 probes the
    ratio would be ~2."""
    f, p = mlp(jax.random.key(5), n_classes=6)
    x = jax.random.normal(jax.random.key(6), (3, 5))
    jac = oracle_jacobian(f, p, x)
    a = np.einsum("icp,jdp->ijcd", jac, jac)
    off = 1 - np.eye(6)
    iu = np.triu_indices(3)
    for probes in (2, 4):
        hutch = np.einsum("ijcd,cd->ij", a * a + a * np.swapaxes(a, 2, 3), off) / probes

        def k0(key, probes=probes):
            phi = jc.structured_projection(key, 4096, output_probes=probes).features(f, p, x)
            return jnp.einsum("ick,jck->ij", phi, phi)

        ks = np.asarray(jax.jit(jax.vmap(k0))(jax.random.split(jax.random.key(7 + probes), 400)))
        ratio = ks.var(0, ddof=1)[iu].sum() / hutch[iu].sum()
        assert 0.8 < ratio < 1.3, (probes, ratio)


@pytest.mark.parametrize("kind", ["structured", "rademacher"])
def test_error_estimate_counts_the_probes(kind):
    """``projected_kernel``'s standard error from the two halves includes the probes' variance: over 200 keys the
    mean estimated variance over the mean squared error of the trNTK⁰ against the float64 oracle lies in [0.7, 1.6]
    (the structured halves may overestimate by up to ~1.5×). Had both halves used the same probes the ratio would
    fall to the projection's share alone (about 0.3 here)."""
    f, p = mlp(jax.random.key(0), n_classes=6)
    x = jax.random.normal(jax.random.key(1), (5, 5))
    jac = oracle_jacobian(f, p, x)
    exact = np.einsum("icp,jcp->ij", jac, jac)

    def one(key):
        pk = jc.projected_kernel(_projection(kind, key, 64, 2).features(f, p, x), normalize=False)
        return pk.kernel, pk.stderr

    k, se = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), 200))
    ratio = np.mean(np.asarray(se) ** 2) / np.mean((np.asarray(k) - exact) ** 2)
    assert 0.7 < ratio < 1.6, ratio


@pytest.mark.parametrize("model", ["resnet", "per-token gpt"])
def test_structured_features_are_the_sketch_of_the_probed_outputs(model):
    """The probes seed the backward passes of every layer kind (convolutions, BatchNorm scales, embeddings, attention,
    LayerNorms, a scan): the features equal the A/B halves of the same sketch (same key) of the model whose outputs
    are the probes' combinations ``f(x) Vᵀ``, with ``V`` drawn as documented. The per-token GPT holds every layer
    kind of the token transformer (embedding, attention, LayerNorm), which is therefore not run again."""
    if model == "resnet":
        f, p = tiny_resnet(jax.random.key(12), n_classes=5)
        x = jax.random.normal(jax.random.key(13), (3, 6, 6, 2), jnp.float64)
    else:
        f, p, x = _data("per-token gpt")
    key = jax.random.key(14)
    flat = lambda q, xx: f(q, xx).reshape(xx.shape[0], -1)  # noqa: E731
    m = jax.eval_shape(flat, p, x).shape[1]
    probed = jc.project_gradients(f, p, x, jc.structured_projection(key, 64, output_probes=4))
    v = probe_matrix(key, 4, m, jnp.float64)
    plain = jc.project_gradients(lambda q, xx: flat(q, xx) @ v.T, p, x, jc.structured_projection(key, 64))
    assert probed.shape == (x.shape[0], 2, 64)
    np.testing.assert_allclose(np.asarray(probed), np.asarray(ab_layout(plain)), rtol=1e-10, atol=1e-12)


def test_trace_ntk_with_probes_is_the_gram_of_the_features():
    """``trace_ntk(projection=...)`` with probes is the Gram product of ``project_gradients``' features, and a
    kernel between two sets uses the same probes (its block equals the symmetric kernel's on the joined inputs);
    same key, same features; another key, others."""
    f, p = mlp(jax.random.key(0), n_classes=6)
    x1 = jax.random.normal(jax.random.key(1), (5, 5))
    x2 = jax.random.normal(jax.random.key(2), (3, 5))
    proj = jc.structured_projection(jax.random.key(3), 32, output_probes=2)
    phi = jc.project_gradients(f, p, jnp.concatenate([x1, x2]), proj)
    gram = np.einsum("ick,jck->ij", phi, phi)
    k12 = jc.trace_ntk(f, normalize=False, projection=proj)(p, x1, x2)
    np.testing.assert_allclose(np.asarray(k12), gram[:5, 5:], rtol=1e-10)
    k11 = jc.trace_ntk(f, projection=proj)(p, x1)
    d = np.sqrt(np.diag(gram)[:5])
    np.testing.assert_allclose(np.asarray(k11), gram[:5, :5] / np.outer(d, d), rtol=1e-10)
    again = jc.project_gradients(f, p, jnp.concatenate([x1, x2]), proj)
    np.testing.assert_array_equal(np.asarray(phi), np.asarray(again))
    other = jc.project_gradients(
        f, p, jnp.concatenate([x1, x2]), jc.structured_projection(jax.random.key(4), 32, output_probes=2)
    )
    assert not np.allclose(np.asarray(phi), np.asarray(other))


def test_block_size_does_not_change_the_features():
    """Probes come from the key, not the block: blocks of 2 and one block of 7 give the same features."""
    f, p = mlp(jax.random.key(0), n_classes=6)
    x = jax.random.normal(jax.random.key(1), (7, 5))
    proj = jc.structured_projection(jax.random.key(3), 32, output_probes=4)
    a = jc.project_gradients(f, p, x, proj, block_size=2)
    b = jc.project_gradients(f, p, x, proj)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_bad_output_probes_are_refused():
    f, p = mlp(jax.random.key(0), n_classes=6)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="must be even"):
        jc.structured_projection(key, 32, output_probes=3)
    with pytest.raises(ValueError, match=">= 2"):
        jc.random_projection(key, 32, output_probes=0)
    with pytest.raises(TypeError, match="integer"):
        jc.structured_projection(key, 32, output_probes=True)
    with pytest.raises(TypeError, match="integer"):
        jc.structured_projection(key, 32, output_probes=2.0)
    with pytest.raises(ValueError, match="dim must be even"):
        jc.random_projection(key, 33, output_probes=2)
    with pytest.raises(ValueError, match="not fewer than the model's 6 outputs"):
        jc.project_gradients(f, p, x, jc.structured_projection(key, 32, output_probes=6))
    with pytest.raises(ValueError, match="pNTK"):
        jc.pseudo_ntk(f, projection=jc.structured_projection(key, 32, output_probes=2))(p, x)
    for proj in (
        jc.random_projection(key, 32, "sparse", output_probes=2),
        jc.structured_projection(key, 32, output_probes=2),
    ):
        with pytest.raises(ValueError, match="summed=True"):
            jc.project_gradients(f, p, x, proj, summed=True)


def test_store_on_disk_keeps_probed_features_apart(tmp_path):
    """A store written with probes is reopened with them (the same features) and refused to a call without them
    (other features), unless ``overwrite``."""
    f, p = mlp(jax.random.key(0), n_classes=6)
    x = jax.random.normal(jax.random.key(1), (6, 5))
    probed = jc.structured_projection(jax.random.key(3), 32, output_probes=2)
    first = jc.project_gradients(f, p, x, probed, block_size=4, path=tmp_path / "s")
    np.testing.assert_allclose(np.asarray(first), np.asarray(jc.project_gradients(f, p, x, probed)), rtol=1e-12)
    again = jc.project_gradients(f, p, x, probed, block_size=4, path=tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    plain = jc.structured_projection(jax.random.key(3), 32)
    with pytest.raises(ValueError):
        jc.project_gradients(f, p, x, plain, block_size=4, path=tmp_path / "s")
    out = jc.project_gradients(f, p, x, plain, block_size=4, path=tmp_path / "s", overwrite=True)
    assert out.shape == (6, 6, 32)
