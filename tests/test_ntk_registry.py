"""The kernel registry (jc.KERNELS, jc.kernel): every name builds a kernel equal to the float64 oracle of its
definition (shared/spec/ntk.md), specs carry name/label/normalization, bad names and options are refused; the kernel
record survives the transforms (batched, kernel_to_disk) with its metadata."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc

TOL64 = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def case():
    f, p = mlp(jax.random.key(0))
    x1 = jax.random.normal(jax.random.key(1), (6, 5))
    x2 = jax.random.normal(jax.random.key(2), (4, 5))
    return f, p, x1, x2, oracle_kernels(f, p, x1, x2)


def _feature(p, x):
    return jnp.tanh(x @ p["W1"] + p["b1"][None, :])


def _layers(p, x):
    h = _feature(p, x)
    return [h, h @ p["W2"]]


def _cos(k, d1, d2):
    return k / np.sqrt(np.outer(d1, d2))


def test_registry_is_static_and_complete():
    assert isinstance(jc.KERNELS, types.MappingProxyType)
    assert list(jc.KERNELS) == ["entk", "trntk", "trntk0", "pntk", "pntk0", "proj_trntk", "proj_pntk", "ck", "em"]
    with pytest.raises(TypeError):
        jc.KERNELS["new"] = jc.KERNELS["trntk"]  # read-only
    labels = {n: jc.kernel_label(n) for n in jc.KERNELS}
    assert labels["trntk"] == "trNTK" and labels["trntk0"] == "trNTK⁰" and labels["pntk"] == "pNTK"
    assert labels["proj_trntk"] == "proj-trNTK" and labels["proj_pntk"] == "proj-pNTK"
    for n, info in jc.KERNELS.items():
        assert info.name == n and info.needs in ("apply_fn", "feature_fn", "layers_fn") and info.summary
        assert info.projected == n.startswith("proj_")


@pytest.mark.parametrize("name", ["entk", "trntk", "trntk0", "pntk", "pntk0", "proj_trntk", "proj_pntk", "ck", "em"])
def test_every_name_matches_its_oracle(case, name):
    f, p, x1, x2, o = case
    info = jc.KERNELS[name]
    fn = {"apply_fn": f, "feature_fn": _feature, "layers_fn": _layers}[info.needs]
    opts = {}
    if info.projected:  # an identity-scaled "projection" is not available: use a large k and a loose tolerance
        opts["projection"] = jc.random_projection(jax.random.key(3), 4096)
    k = jc.kernel(name, fn, **opts)
    assert k.spec.name == name and k.spec.label == info.label and k.spec.normalize == info.normalized
    got = np.asarray(k(p, x1, x2))
    h1, h2 = np.asarray(_feature(p, x1)), np.asarray(_feature(p, x2))
    g1, g2 = np.asarray(_layers(p, x1)[1]), np.asarray(_layers(p, x2)[1])
    want = {
        "entk": o["full"],
        "trntk": o["trntk"],
        "trntk0": o["trntk0"],
        "pntk": o["pntk_norm"],
        "pntk0": o["pntk"],
        "proj_trntk": o["trntk"],
        "proj_pntk": o["pntk_norm"],
        "ck": _cos(h1 @ h2.T, (h1 * h1).sum(1), (h2 * h2).sum(1)),
        "em": _cos(h1 @ h2.T + g1 @ g2.T, (h1 * h1).sum(1) + (g1 * g1).sum(1), (h2 * h2).sum(1) + (g2 * g2).sum(1)),
    }[name]
    # projected: |Δcos| ~ a/k with a of order 10 for this model -> 0.1 is far outside the typical error
    np.testing.assert_allclose(got, want, **(dict(atol=0.1) if info.projected else TOL64))


def test_factories_carry_registry_names():
    f, _ = mlp(jax.random.key(0))
    proj = jc.random_projection(jax.random.key(1), 8)
    assert jc.pseudo_ntk(f).spec.name == "pntk0" and jc.pseudo_ntk(f).spec.label == "pNTK⁰"
    assert jc.pseudo_ntk(f, normalize=True).spec.name == "pntk"
    assert jc.trace_ntk(f, projection=proj).spec.name == "proj_trntk"
    assert jc.trace_ntk(f, normalize=False, projection=proj).spec.label == "proj-trNTK⁰"
    assert jc.empirical_ntk(f).spec.name == "entk"
    assert jc.conjugate_kernel(_feature).spec.name == "ck0"
    assert jc.embedding_kernel(_layers).spec.label == "Em"


def test_bad_names_and_options():
    f, _ = mlp(jax.random.key(0))
    with pytest.raises(ValueError, match="entk, trntk, trntk0"):
        jc.kernel("trace", f)
    with pytest.raises(ValueError, match="unknown kernel"):
        jc.kernel_label("pseudo")
    with pytest.raises(ValueError, match="needs projection"):
        jc.kernel("proj_trntk", f)
    with pytest.raises(ValueError, match="takes no projection"):
        jc.kernel("trntk", f, projection=jc.random_projection(jax.random.key(0), 4))
    with pytest.raises(ValueError, match="normalization is part of the name"):
        jc.kernel("trntk", f, normalize=False)
    with pytest.raises(TypeError, match="unexpected option"):
        jc.kernel("ck", _feature, implementation="jacobian")
    with pytest.raises(TypeError, match="callable"):
        jc.kernel("trntk", 3)


def test_record_survives_transforms_and_partial_warns(case, tmp_path):
    f, p, x1, x2, o = case
    k = jc.kernel("trntk", f)
    b = jc.batched(k, 4)
    assert isinstance(b, jc.Kernel) and b.spec.name == "trntk" and b.spec.transforms == ("batched",)
    np.testing.assert_allclose(b(p, x1, x2), o["trntk"], **TOL64)
    np.testing.assert_allclose(jax.jit(b)(p, x1, x2), o["trntk"], **TOL64)
    d = jc.kernel_to_disk(b, p, x1, x2, path=tmp_path / "r", block_size=3)
    np.testing.assert_allclose(d, o["trntk"], **TOL64)
    with pytest.warns(RuntimeWarning, match="functools.partial"):
        jc.batched(functools.partial(k), 4)
