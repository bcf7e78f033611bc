"""The command line end to end on tiny inputs: each command's success path and each failure path (one clear line on
stderr, exit status 2, no traceback)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxcompare.cli import main

ENV = {**os.environ, "JAXCOMPARE_PROGRESS": "0", "MPLBACKEND": "Agg"}


def run_cli(*args, cwd=None):
    """Run as a real process (what a user sees)."""
    p = subprocess.run([sys.executable, "-m", "jaxcompare", *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                       timeout=600)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def score_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("scores")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 200))
    cand = np.concatenate([rng.normal(size=(2, 200)), rng.normal(2.0, 1.0, size=(1, 200))])
    np.savez(d / "cand.npz", scores=cand)
    np.save(d / "ref.npy", ref)
    np.savetxt(d / "ref.csv", ref, delimiter=",")
    bad = cand.copy()
    bad[0, 3] = np.nan
    np.save(d / "nan.npy", bad)
    np.save(d / "short.npy", ref[:, :50])
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "garbage.csv").write_text("a,b\nc,d\n")
    return d


def test_help_for_every_command(capsys):
    for cmd in ([], ["demo"], ["alpha"], ["lwr"], ["ntk"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: jaxcompare" in capsys.readouterr().out


def test_alpha_exact_and_bootstrap(score_files, tmp_path):
    out = tmp_path / "a.json"
    rc, so, se = run_cli("alpha", "--candidates", str(score_files / "cand.npz"), "--reference",
                         str(score_files / "ref.csv"), "--bootstrap", "0", "--out", str(out))
    assert rc == 0, se
    res = json.loads(out.read_text())
    a = np.array(res["alpha_hat"])
    assert a.shape == (3,)
    # the shifted candidate (mean +2 sd) must be far less typical than the two null candidates
    assert a[2] > 0.5 and a[:2].max() < 0.3
    # oracle: the same quantity through the library
    import jax

    import jaxcompare as jc

    cand = np.load(score_files / "cand.npz")["scores"]
    ref = np.load(score_files / "ref.npy")
    thr = jc.ks_threshold(200, 200, 0.01)
    np.testing.assert_allclose(a, [float(jc.alpha_hat(c, ref.reshape(-1), threshold=thr)) for c in cand], atol=1e-9)
    rc, so, se = run_cli("alpha", "--candidates", str(score_files / "cand.npz"), "--reference",
                         str(score_files / "ref.npy"), "--bootstrap", "5")
    assert rc == 0, se
    assert "bootstrap (5 rounds" in so


@pytest.mark.parametrize("case,needle", [
    ("missing", "not found"), ("nan", "NaN"), ("short", "same test points"), ("obj", "pickles"),
    ("garbage", "could not be read"), ("ext", ".npy, .npz or .csv"),
])
def test_alpha_bad_files(score_files, tmp_path, case, needle):
    cand = {"missing": str(tmp_path / "nope.npy"), "nan": str(score_files / "nan.npy"),
            "short": str(score_files / "short.npy"), "obj": str(score_files / "obj.npy"),
            "garbage": str(score_files / "garbage.csv"), "ext": str(tmp_path / "x.json")}[case]
    if case == "ext":
        (tmp_path / "x.json").write_text("{}")
    rc, so, se = run_cli("alpha", "--candidates", cand, "--reference", str(score_files / "ref.npy"))
    assert_one_line_error(rc, se, needle)


def test_alpha_bad_level(score_files):
    rc, so, se = run_cli("alpha", "--candidates", str(score_files / "cand.npz"), "--reference",
                         str(score_files / "ref.npy"), "--level", "1.5")
    assert rc == 2 and "(0, 1)" in se and "Traceback" not in se


MODEL = textwrap.dedent("""
    import jax.numpy as jnp
    def apply_fn(params, x):
        return jnp.tanh(x @ params["l1"]["w"]) @ params["l2"]["w"]
    def bad_fn(params, x):
        return (x @ params["l1"]["w"]).sum(-1)
""")


@pytest.fixture(scope="module")
def ntk_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ntk")
    (d / "mymodel.py").write_text(MODEL)
    rng = np.random.default_rng(1)
    np.savez(d / "params.npz", **{"l1/w": rng.normal(size=(4, 5)), "l2/w": rng.normal(size=(5, 3))})
    np.save(d / "x.npy", rng.normal(size=(7, 4)))
    np.save(d / "x_bad.npy", rng.normal(size=(7, 3)))
    return d


def test_ntk_command_matches_library(ntk_files):
    rc, so, se = run_cli("ntk", "--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy",
                         "--kernel", "trace0", "--block-size", "3", "--out", "k.npy", cwd=ntk_files)
    assert rc == 0, se
    k = np.load(ntk_files / "k.npy")
    # oracle, derived by hand for f = tanh(x W1) W2 (no biases), trNTK⁰ = sum over classes:
    #   W2 block: d f_c / d W2[a, c'] = h_a [c == c']          -> C * (h h^T)
    #   W1 block: d f_c / d W1[k, a] = x_k (1 - h_a^2) W2[a, c] -> (x x^T) * sum_a dh_ia dh_ja sum_c W2[a, c]^2
    p = np.load(ntk_files / "params.npz")
    w1, w2, x = p["l1/w"], p["l2/w"], np.load(ntk_files / "x.npy")
    h = np.tanh(x @ w1)
    dh = 1 - h ** 2
    oracle = w2.shape[1] * (h @ h.T) + (x @ x.T) * np.einsum("ia,ja,ac,ac->ij", dh, dh, w2, w2)
    np.testing.assert_allclose(k, oracle, rtol=1e-6)


@pytest.mark.parametrize("args,needle", [
    (["--model", "nosuchmod:f"], "could not import"),
    (["--model", "mymodel:nothing"], "no function"),
    (["--model", "mymodel"], "module:function"),
    (["--model", "mymodel:bad_fn"], "(N, C)"),
    (["--model", "mymodel:apply_fn", "--data", "x_bad.npy"], "failed"),
    (["--model", "mymodel:apply_fn", "--params", "x.npy"], ".npz"),
])
def test_ntk_command_failures(ntk_files, args, needle):
    base = {"--params": "params.npz", "--data": "x.npy", "--out": "o.npy"}
    merged = dict(base)
    it = iter(args)
    model = None
    for a in it:
        v = next(it)
        if a == "--model":
            model = v
        else:
            merged[a] = v
    flat = ["--model", model] + [t for kv in merged.items() for t in kv]
    rc, so, se = run_cli("ntk", *flat, cwd=ntk_files)
    assert_one_line_error(rc, se, needle)


def test_lwr_command(tmp_path):
    rc, so, se = run_cli("lwr", "--n", "60", "--d", "30", "--h", "45", "--steps", "6", "--out", str(tmp_path / "o"))
    assert rc == 0, se
    assert (tmp_path / "o" / "spectra.png").stat().st_size > 1000
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["n"] == 60
    rc, so, se = run_cli("lwr", "--n", "0")
    assert rc == 2 and "positive integer" in se
    rc, so, se = run_cli("lwr", "--n", "60", "--d", "30", "--h", "45", "--optimizer", "sgd")
    assert_one_line_error(rc, se, "--batch-size")


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "rep"
    rc, so, se = run_cli("demo", "--quick", "--out", str(out))
    assert rc == 0, se[-3000:]
    html = (out / "index.html").read_text()
    res = json.loads((out / "results.json").read_text())
    for sec in ("ensembles", "surrogates", "lwr", "microscope"):
        assert sec in res, sec
    assert html.count("<img") >= 6
    ens = res["ensembles"]["multiclass"]
    assert len(ens["candidates"]) > 0 and 0 <= ens["candidates"][0]["alpha_hat"] <= 1
    rc, so, se = run_cli("demo", "--quick", "--out", str(out), "--sections", "nonsense")
    assert_one_line_error(rc, se, "unknown section")
