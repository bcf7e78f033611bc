"""The study sections added for issue 18 (architectures on MNIST-1D, recipe identification, α̂-guided ensembles) at
tiny sizes: their helpers against NumPy oracles written here, the sections' mechanics end to end."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxcompare.study import SECTIONS, Report
from jaxcompare.study._architectures import block_means
from jaxcompare.study._ensemble_selection import ensemble_metrics, selection_part


def _ece_oracle(p, y, bins=15):
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(np.mean(pred[sel] == y[sel]) - conf[sel].mean())
    return total


def test_ensemble_metrics_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 200, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = rng.integers(0, 4, 200)
    got = ensemble_metrics(probs, y)
    p = probs.mean(0)
    assert got["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-12)
    assert got["NLL"] == pytest.approx(-np.mean(np.log(p[np.arange(200), y])), rel=1e-6)
    assert got["ECE"] == pytest.approx(_ece_oracle(p, y), abs=1e-5)


def test_block_means_against_loops():
    rng = np.random.default_rng(1)
    groups = ["a", "b", "a", "c", "b", "a"]
    v = rng.random((6, 6))
    got = block_means(v, groups, ("a", "b", "c"))
    for i, ga in enumerate("abc"):
        for j, gb in enumerate("abc"):
            vals = [v[r, c] for r in range(6) for c in range(6) if r != c and groups[r] == ga and groups[c] == gb]
            assert (np.isnan(got[i, j]) and not vals) or got[i, j] == pytest.approx(np.mean(vals), abs=1e-15)


def test_selection_part_drops_a_clearly_perturbed_minority():
    rng = np.random.default_rng(2)
    n_test, c = 400, 5
    y = rng.integers(0, c, n_test)
    onehot = np.eye(c)[y]
    good = [4.0 * onehot + rng.normal(size=(n_test, c)) for _ in range(6)]
    bad = [rng.normal(size=(n_test, c)) * 3 for _ in range(2)]  # label-free noise: far from the standard models
    logits = np.stack(good + bad).astype(np.float32)
    recipe_of = np.array(["standard"] * 6 + ["noise"] * 2)
    report = Report("t")
    out = selection_part(jax.random.key(0), report, logits, y, recipe_of, np.arange(6), dict(sel_boot=4))
    assert out["k"] == 3 and out["selection_points"] + out["evaluation_points"] == n_test
    rows = {(r["perturbed part of the pool"], r["ensemble"].split(" (")[0]): r for r in out["rows"]}
    assert rows[("noise", "α̂-selected")]["perturbed kept"] == "0/3"
    assert rows[("noise", "naive")]["perturbed kept"] == "2/8"
    assert rows[("all three", "standard models only")]["perturbed kept"] == "0/6"
    assert "α̂-guided ensembling" in report.html()


def test_identification_part_tables():
    """The ensembles section's recipe-identification part on values of known, clearly different laws (N(0,1),
    N(3,1), N(0,5²): KS distances >= 0.5; 150 values per model, so each sample is within KS 0.16 of its law except
    with probability < 1e-3): every model identified, with both thresholds."""
    from jaxcompare.study._recipes import identification_part

    rng = np.random.default_rng(3)
    laws = {"standard": (0.0, 1.0), "noisy": (3.0, 1.0), "wide": (0.0, 5.0)}
    names = np.array([r for r in laws for _ in range(5)])  # 4 used per recipe (pools of 2), one spare, unused
    feats = {"scores": np.stack([rng.normal(*laws[r], 150) for r in names]), "same": np.zeros((len(names), 150))}
    report = Report("t")
    out = identification_part(report, feats, names, list(laws), 4, "tiny")
    rows = {(r["feature (per model)"], r["threshold"].split()[0]): r for r in out["table"]}
    assert set(rows) == {(f, t) for f in feats for t in ("DKW", "pool")}
    assert rows[("scores", "DKW")]["identified"] == "12/12"
    assert out["accuracy"]["scores/dkw"] == out["accuracy"]["scores/pool"] == 1.0
    # identical values for every model: all α̂ and KS are 0, the tie goes to the first recipe (a third right)
    assert out["accuracy"]["same/dkw"] == pytest.approx(1 / 3)
    assert np.asarray(out["confusion"]["same/dkw"])[:, 0].tolist() == [4, 4, 4]
    assert out["identified_models"] == 12 and out["pool_size"] == 2
    page = report.html()
    assert "Which recipe trained this model?" in page and "→ noisy" in page


# ----------------------------------------------------------------------------------------------------------------
# sections end to end at tiny sizes
# ----------------------------------------------------------------------------------------------------------------
def test_registry_has_the_new_sections_last():
    assert list(SECTIONS)[-2:] == ["architectures", "recipes"]
    assert "sel_boot" in SECTIONS["ensembles"].quick


def test_recipes_section_with_synthetic_spectra(monkeypatch, tmp_path):
    """The section's bookkeeping on spectra drawn here (each optimizer its own law): every held-out run identified."""
    from jaxcompare.study import _recipes

    def fake(cfg, n_seeds, steps):
        rng = np.random.default_rng(steps)
        out = {}
        for i, name in enumerate(_recipes.OPTIMIZERS):
            d = cfg.d
            w = rng.gamma(1.0 + 2 * i, 1.0 / (1.0 + 2 * i), size=(n_seeds, d)) * (1 + i)
            out[name] = dict(
                weights=w,
                ck=w * 2,
                ntk=w + 1,
                init=rng.gamma(1.0, 1.0, size=(n_seeds, d)),
                align=np.full(n_seeds, 0.05),
                result=np.zeros(n_seeds, np.int32),
            )
        return out

    monkeypatch.setattr(_recipes, "simulate_recipes", fake)
    report = Report("t")
    size = dict(rec_size=(60, 80, 40), rec_pool=3, rec_held=2, rec_steps=7)
    out = _recipes.RECIPES_SECTION.run(jax.random.key(0), report, size, str(tmp_path))
    assert out["accuracy"]["weights/dkw"] == 1.0
    assert np.asarray(out["confusion"]["weights/dkw"]).tolist() == (2 * np.eye(4, dtype=int)).tolist()
    assert sum(sum(r.values()) for r in out["rule_confusion"].values()) == 8
    page = report.html()
    assert "hand-set rule" in page and "Which optimizer trained this network?" in page


def test_architectures_section_tiny(tmp_path):
    """The real section (MNIST-1D, three architectures, kernel similarity, α̂) at the smallest sizes."""
    report = Report("t")
    size = dict(
        arch_samples=200, arch_seeds=2, arch_steps=2, arch_points=12, arch_perms=9, arch_boot=2, arch_surrogate_train=40
    )
    out = SECTIONS["architectures"].run(jax.random.key(0), report, size, str(tmp_path))
    cka, p = np.asarray(out["cka"]), np.asarray(out["p_value"])
    assert cka.shape == p.shape == (6, 6) and out["names"][0] == "MLP 0" and out["names"][-1] == "GRU 1"
    np.testing.assert_allclose(cka, cka.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-5)
    assert np.all((p >= 1 / 10 - 1e-9) & (p <= 1))  # p = (1 + #) / (1 + B), B = 9
    groups = [n.split()[0].lower() for n in out["names"]]
    np.testing.assert_allclose(out["cka_blocks"], block_means(cka, groups, ("mlp", "cnn", "gru")), atol=1e-12)
    alpha = np.asarray(out["alpha_hat_blocks"], float)
    assert alpha.shape == (3, 3) and np.all((alpha >= 0) & (alpha <= 1))
    assert [r["architecture"] for r in out["accuracy"]] == ["MLP", "CNN", "GRU"]
    assert (tmp_path / "figures" / "architectures_cka.png").stat().st_size > 5_000
    surr = out["surrogates"]
    assert [r["architecture"] for r in surr] == ["MLP", "CNN", "GRU"] and out["surrogate_train"] == 40
    for r in surr:  # TAD is the accuracy gap in percentage points; accuracies are multiples of 1/12 test points
        np.testing.assert_allclose(r["TAD (pp)"], 100 * (r["surrogate accuracy"] - r["network accuracy"]), atol=1e-9)
        assert abs(r["network accuracy"] * 12 - round(r["network accuracy"] * 12)) < 1e-6
        assert -1 <= r["τ_K"] <= 1 and 0 <= r["R_Miss"] <= 1
    assert "τ_K" in report.html() and "trNTK surrogate faithfulness" in " ".join(report.findings)
