"""The README's self-contained Python examples run as printed, and the numbers their comments state stay true.

Blocks that continue an earlier block's variables are run after it; the linear-width example (full size, minutes)
and the surrogate example (needs the digits notebook's model) are covered by their notebooks instead.
"""

import os
import re
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def _run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "snippet.py"
    path.write_text(code, encoding="utf-8")
    return runpy.run_path(str(path))


def _find(fragment):
    hits = [b for b in _blocks() if fragment in b]
    assert len(hits) == 1, f"expected one README python block containing {fragment!r}, found {len(hits)}"
    return hits[0]


def test_kernels_quickstart_and_variants(tmp_path, monkeypatch):
    quick = _find("jc.from_linen(model, variables)")
    more = _find("jc.kernel_to_disk(k, params, x")
    g = _run(quick + "\n" + more, tmp_path, monkeypatch)
    assert g["K"].shape == (300, 300) and g["K0"].shape == (300, 50)
    np.testing.assert_allclose(np.diag(np.asarray(g["K"])), 1.0, atol=1e-5)  # "ones on the diagonal"
    for name in ("Kp", "Ks", "Kd"):
        assert np.asarray(g[name]).shape == (300, 300)
    np.testing.assert_allclose(np.asarray(g["Ks"]), np.asarray(g["K"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(g["Kd"]), np.asarray(g["K"]), atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trimming_example(tmp_path, monkeypatch):
    g = _run(_find("jc.ensemble_alpha_hat(jax.random.key(0), gaps"), tmp_path, monkeypatch)
    a = np.asarray(g["res"].alpha_hat)
    assert abs(a[0] - 0.21) < 0.01 and np.all(a[1:3] < 0.005)  # "≈ [0.21, 0.00, 0.00]"
    assert abs(float(g["delta"]) - 0.0520) < 5e-5  # "0.0520"


def test_microscope_example(tmp_path, monkeypatch):
    g = _run(_find("embed.make_demo_embeddings(jax.random.key(0))"), tmp_path, monkeypatch)
    assert g["Z"].shape == (800, 1)
    sep, res = g["sep"], g["res"]
    # "accuracy 0.924, 95% Wilson [0.903, 0.940]" and "MMD²_u = 0.042, p = 0.001"
    np.testing.assert_allclose([sep.accuracy, sep.ci_low, sep.ci_high], [0.924, 0.903, 0.940], atol=1.5e-3)
    assert abs(float(res.statistic) - 0.042) < 1.5e-3 and float(res.p_value) < 0.0015


def test_per_layer_spectra_example(tmp_path, monkeypatch):
    g = _run(_find("jc.spectra.analyze_params(jax.random.key(0), params"), tmp_path, monkeypatch)
    assert round(g["res"].row("Dense_0/kernel")["alpha"], 2) == 6.02  # "6.02"


def test_calibration_example(tmp_path):
    """Run as a user would: a fresh interpreter with JAX's defaults (float32; the suite enables float64, which draws
    other bootstrap resamples) and XLA's default code generation (the suite's LLVM -O0, tests/conftest.py, makes
    this example's 200 bootstrap rounds on 10 000 points compute three times slower: 35 s of CPU instead of 28 s)."""
    import subprocess
    import sys

    path = tmp_path / "snippet.py"
    path.write_text(_find("jc.smooth_ece_interval(jax.random.key(0), f, y"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    flags = env.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "").strip()
    env.pop("XLA_FLAGS", None)
    if flags:
        env["XLA_FLAGS"] = flags
    env["MPLBACKEND"] = "Agg"
    out = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=True
    ).stdout.split("\n")
    assert out[0] == "0.1074"  # "0.1074 (= relplot.smECE(f, y))"
    assert out[1] == "0.1016 0.1138"


@pytest.mark.slow
def test_compare_example(tmp_path, monkeypatch):
    g = _run(_find('load_checkpoints("ckpts")'), tmp_path, monkeypatch)
    assert sorted(g["res"].atypical) == ["model4", "model5"]  # "['model4', 'model5']"
    assert (tmp_path / "compare-report" / "index.html").exists()


def test_kernel_similarity_example(tmp_path, monkeypatch):
    g = _run(_find("jc.kernel_similarity(jax.random.key(2), models, x"), tmp_path, monkeypatch)
    lin = g["jc"].linear_cka
    biased, debiased = float(lin(g["X"], g["Y"])), float(lin(g["X"], g["Y"], debiased=True))
    assert 0.5 < biased < 0.8 and abs(debiased) < 0.15  # "0.67 ± 0.02 (spurious) vs 0.00 ± 0.05 over draws" (3 sd)

    def both(k):  # the same independent features, 200 draws: the comment's means and standard deviations
        kx, ky = jax.random.split(k)
        X, Y = jax.random.normal(kx, (32, 64), jnp.float32), jax.random.normal(ky, (32, 64), jnp.float32)
        return lin(X, Y), lin(X, Y, debiased=True)

    b, d = (np.asarray(v) for v in jax.vmap(both)(jax.random.split(jax.random.key(7), 200)))
    assert abs(b.mean() - 0.67) < 0.01 and 0.01 < b.std() < 0.03  # "0.67 ± 0.02"
    assert abs(d.mean()) < 0.01 and 0.035 < d.std() < 0.065  # "0.00 ± 0.05"
    cka = np.asarray(g["res"].cka)
    assert cka.shape == (3, 3) and np.allclose(np.diag(cka), 1.0, atol=1e-5)
