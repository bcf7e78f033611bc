"""jaxcompare.compare: score reductions, compare_models end to end on checkpoints in mixed formats, the result's
save/load and report, the ``compare`` command and its failure paths."""

import argparse
import csv
import html
import importlib.util
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompare.cli._compare import add_parser, run
from jaxcompare.compare import compare_models, load_checkpoints, load_comparison, save_params
from jaxcompare.metrics import logit_scores


def score_reduction(z, y=None, kind="margin"):
    return logit_scores(z, y, score=kind)


N_STD, N_NOISY = 5, 3


# ---------------------------------------------------------------- score reductions against NumPy


def _np_scores(z, y, kind):
    z = np.asarray(z, np.float64)
    n, c = z.shape[-2:]
    out = np.empty(z.shape[:-1])
    for idx in np.ndindex(*z.shape[:-1]):
        row, i = z[idx], idx[-1]
        if kind == "margin":
            out[idx] = row[y[i]] - max(row[k] for k in range(c) if k != y[i])
        elif kind == "logit_gap":
            out[idx] = row[1] - row[0] if c == 2 else np.sort(row)[-1] - np.sort(row)[-2]
        else:
            out[idx] = row[y[i]] - np.log(np.sum(np.exp(row - row.max()))) - row.max()
    return out


@pytest.mark.parametrize("kind", ["margin", "logit_gap", "true_logprob"])
@pytest.mark.parametrize("shape", [(7, 4), (3, 7, 4), (2, 3, 7, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_reduction_against_numpy(kind, shape, dtype):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(dtype) * 3
    y = rng.integers(0, shape[-1], shape[-2])
    got = score_reduction(z, y, kind)
    assert got.shape == shape[:-1] and got.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(got, np.float64), _np_scores(z, y, kind), rtol=tol, atol=tol)
    jitted = jax.jit(lambda a, b: score_reduction(a, b, kind))(z, y)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=tol, atol=tol)
    if kind != "logit_gap":  # shifting every logit changes nothing
        np.testing.assert_allclose(
            np.asarray(score_reduction(z + dtype(5), y, kind), np.float64),
            np.asarray(got, np.float64),
            atol=1e-4 if dtype == np.float32 else 1e-10,
        )


def test_score_reduction_errors():
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="needs the true labels"):
        score_reduction(z, None, "margin")
    with pytest.raises(ValueError, match="score must be one of"):
        score_reduction(z, np.zeros(4, int), "entropy")
    with pytest.raises(ValueError, match="C >= 2 classes"):
        score_reduction(np.zeros((4, 1)), np.zeros(4, int))
    with pytest.raises(ValueError, match="labels must have length 4"):
        score_reduction(z, np.zeros(5, int))
    with pytest.raises(ValueError, match="labels must lie in"):
        score_reduction(z, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="finite"):
        score_reduction(np.full((4, 3), np.nan), np.zeros(4, int))


# ---------------------------------------------------------------- a small population of trained MLPs


def _apply(p, x):
    h = jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"][None, :])
    return h @ p["out"]["kernel"] + p["out"]["bias"][None, :]


def _task(seed=0, n_train=600, n_test=1000, d=6, c=3):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, d)) * 1.6

    def draw(n):
        y = rng.integers(0, c, n)
        return (means[y] + rng.standard_normal((n, d))).astype(np.float32), y.astype(np.int32)

    return (*draw(n_train), *draw(n_test))


def _train(key, x, y, noise, steps=300, width=16, c=3):
    k_init, k_noise = jax.random.split(key)
    d = x.shape[1]
    k1, k2 = jax.random.split(k_init)
    p = {
        "hidden": {"kernel": jax.random.normal(k1, (d, width)) / np.sqrt(d), "bias": jnp.zeros(width)},
        "out": {"kernel": jax.random.normal(k2, (width, c)) / np.sqrt(width), "bias": jnp.zeros(c)},
    }
    flip = jax.random.uniform(k_noise, y.shape) < noise
    y_used = jnp.where(flip, jax.random.randint(k_noise, y.shape, 0, c), y)
    opt = optax.adam(0.03)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_apply(p, x), y_used).mean()

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return p


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """5 standard models and 3 trained with 45 % label noise, saved in mixed formats (npz, msgpack, safetensors and,
    when orbax-checkpoint is installed, one orbax directory)."""
    serialization = pytest.importorskip("flax.serialization")
    x_tr, y_tr, x_te, y_te = _task()
    noise = jnp.array([0.0] * N_STD + [0.45] * N_NOISY)
    keys = jax.random.split(jax.random.key(0), N_STD + N_NOISY)
    stacked = jax.jit(jax.vmap(lambda k, nz: _train(k, x_tr, y_tr, nz)))(keys, noise)
    d = tmp_path_factory.mktemp("ckpts")
    names, groups = [], []
    for i in range(N_STD + N_NOISY):
        p = jax.tree_util.tree_map(lambda a, i=i: np.asarray(a[i], np.float32), stacked)
        name = f"std{i}" if i < N_STD else f"noisy{i - N_STD}"
        fmt = ("npz", "msgpack", "safetensors")[i % 3]
        if i == N_STD + N_NOISY - 1 and importlib.util.find_spec("orbax") is not None:
            import orbax.checkpoint as ocp

            ck = ocp.StandardCheckpointer()
            ck.save(os.path.abspath(d / name), p)
            ck.wait_until_finished()
        elif fmt == "msgpack":
            (d / f"{name}.msgpack").write_bytes(serialization.to_bytes(p))
        else:
            save_params(p, d / f"{name}.{fmt}")
        names.append(name)
        groups.append("standard" if i < N_STD else "label noise")
    data = d.parent / "data.npz"
    np.savez(data, x_test=x_te, y_test=y_te, x_train=x_tr, y_train=y_tr)
    return {
        "dir": d,
        "names": names,
        "groups": groups,
        "x_test": x_te,
        "y_test": y_te,
        "x_train": x_tr,
        "y_train": y_tr,
        "data": data,
    }


@pytest.fixture(scope="module")
def grouped(population):
    loaded = load_checkpoints(population["dir"])
    gmap = dict(zip(population["names"], population["groups"]))
    groups = [gmap[n] for n, _ in loaded]
    res = compare_models(
        jax.random.key(3),
        _apply,
        loaded,
        population["x_test"],
        population["y_test"],
        x_train=population["x_train"],
        y_train=population["y_train"],
        groups=groups,
        n_boot=40,
        progress_bar=False,
    )
    return loaded, groups, res


def _naive_ece(p, y, n_bins=15):
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if sel.any():
            total += sel.sum() / len(y) * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return total


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_end_to_end_names_the_perturbed_models(population, grouped):
    loaded, groups, res = grouped
    noisy = {n for n in population["names"] if n.startswith("noisy")}
    assert set(res.atypical) == noisy
    summary = " ".join(res.findings)
    for n in noisy:
        assert n in summary
    atyp_sentence = next(s for s in res.findings if "atypical" in s)
    assert all(n not in atyp_sentence for n in population["names"] if n.startswith("std"))
    assert res.settings["reference"] == "standard"
    roles = {r["name"]: r["role"] for r in res.rows}
    assert all(roles[n] == ("candidate" if n in noisy else "reference") for n in roles)
    # the classic metrics against independent NumPy computations
    logits = np.stack([np.asarray(_apply(p, population["x_test"]), np.float64) for _, p in loaded])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = population["y_test"]
    ref = [i for i, g in enumerate(groups) if g == "standard"]
    for i, r in enumerate(res.rows):
        others = [j for j in ref if j != i]
        ens = probs[others].mean(0).argmax(1)
        assert r["accuracy"] == pytest.approx((logits[i].argmax(1) == y).mean(), abs=1e-6)  # float32 mean
        assert r["churn"] == pytest.approx((logits[i].argmax(1) != ens).mean(), abs=1e-6)
        assert r["ece"] == pytest.approx(_naive_ece(probs[i], y), abs=1e-5)
        med = np.median([(logits[j].argmax(1) == y).mean() for j in others])
        assert r["accuracy_gap"] == pytest.approx(abs(r["accuracy"] - med), abs=1e-6)
        train_acc = (np.asarray(_apply(loaded[i][1], population["x_train"])).argmax(1) == population["y_train"]).mean()
        assert r["train_accuracy"] == pytest.approx(train_acc, abs=1e-6)
    assert sorted(r["rank"] for r in res.rows) == list(range(1, len(res.rows) + 1))
    np.testing.assert_allclose(res.arrays["scores"], _np_scores(logits, y, "margin"), atol=1e-4)


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_alpha_column_is_the_published_protocol(grouped, population):
    """Wiring check: candidates against all reference models, reference models leave-one-out (the numerics of
    ensemble_alpha_hat are tested against an LP oracle in test_trimming)."""
    _, groups, res = grouped
    import jaxcompare as jc

    boot = res.arrays["alpha_boot"]
    assert boot.shape == (len(groups), 40)
    for r, b in zip(res.rows, boot):
        assert r["alpha_hat"] == pytest.approx(b.mean(), abs=1e-6)
        assert r["alpha_hat_sd"] == pytest.approx(b.std(), abs=1e-6)
    n = len(population["y_test"]) // 2
    assert res.settings["threshold"] == pytest.approx(np.sqrt(np.log(2 / 0.01) / n) + 1 / n, rel=1e-6)
    assert jc.ks_threshold(n, n, 0.01) == pytest.approx(res.settings["threshold"], rel=1e-6)


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_detection_auroc_against_sklearn(grouped):
    metrics = pytest.importorskip("sklearn.metrics")
    _, groups, res = grouped
    pos = np.array([g == "label noise" for g in groups])
    for d in res.detection:
        v = np.array([r[d["statistic"]] for r in res.rows])
        assert d["auroc"] == pytest.approx(metrics.roc_auc_score(pos, v), abs=1e-12)
        assert d["n_group"] == N_NOISY and d["n_reference"] == N_STD
    alpha = next(d for d in res.detection if d["statistic"] == "alpha_hat")
    assert alpha["auroc"] == 1.0


@pytest.mark.slow
def test_without_groups_leave_one_out(population, grouped):
    loaded, _, _ = grouped
    res = compare_models(
        jax.random.key(4),
        _apply,
        loaded,
        population["x_test"],
        population["y_test"],
        n_boot=40,
        sections=("alpha",),
        progress_bar=False,
    )
    assert {r["role"] for r in res.rows} == {"leave-one-out"}
    assert set(res.atypical) == {n for n in population["names"] if n.startswith("noisy")}
    assert "leave-one-out" in res.findings[0]
    assert res.detection == ()
    probs = np.stack([np.asarray(jax.nn.softmax(_apply(p, population["x_test"])), np.float64) for _, p in loaded])
    for i, r in enumerate(res.rows):
        ens = np.delete(probs, i, axis=0).mean(0).argmax(1)
        assert r["churn"] == pytest.approx((probs[i].argmax(1) != ens).mean(), abs=1e-6)


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_save_load_roundtrip_and_report(tmp_path, grouped):
    _, _, res = grouped
    res.save(tmp_path / "saved")
    back = load_comparison(tmp_path / "saved")
    assert back.to_dict() == res.to_dict()
    for k, a in res.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], a)
    assert back.atypical == res.atypical
    index = res.report(tmp_path / "rep")
    page = open(index, encoding="utf-8").read()
    assert page.index("Findings") < page.index("<h2>Models")
    assert page.count('src="data:image/png;base64,') == 3
    assert "max-width:100%" in page and 'class="scroll"' in page
    for f in ("results.json", "models.csv", "alpha_vs_accuracy.png", "alpha_vs_churn.png", "alpha_vs_ece.png"):
        assert os.path.getsize(tmp_path / "rep" / f) > 0
    with open(tmp_path / "rep" / "models.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"checkpoint", "group", "accuracy", "churn", "ece", "alpha_hat", "alpha_hat_sd"} <= set(rows[0])
    assert [r["checkpoint"] for r in rows] == res.names
    assert float(rows[0]["alpha_hat"]) == pytest.approx(res.rows[0]["alpha_hat"])
    data = json.load(open(tmp_path / "rep" / "results.json"))
    assert data["settings"]["n_boot"] == 40 and data["settings"]["score"] == "margin"
    with pytest.raises(FileNotFoundError, match="comparison.json"):
        load_comparison(tmp_path / "rep" / "nowhere")


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_report_escapes_text(tmp_path, grouped):
    import dataclasses

    _, _, res = grouped
    nasty = {n: v for n, v in zip(res.names, ["<script>alert(1)</script>", "a & b", "|<u1, β>|"])}
    rename = lambda t: t if not isinstance(t, str) else next((v for k, v in nasty.items() if k == t), t)
    rows = [dict(r, name=rename(r["name"]), group="<g>" if r["group"] == "standard" else r["group"]) for r in res.rows]
    findings = list(res.findings) + [f"model {v} is odd" for v in nasty.values()]
    res = dataclasses.replace(res, rows=rows, findings=findings)
    page = open(res.report(tmp_path), encoding="utf-8").read()
    assert "<script>" not in page and "<g>" not in page and "|<u1" not in page
    assert html.escape("|<u1, β>|") in page and "a &amp; b" in page and "&lt;g&gt;" in page
    assert not re.search(
        r"<(?!/?(html|head|meta|title|style|body|h1|h2|section|p|div|span|b|table|thead|tbody|tr|"
        r"th|td|figure|img|figcaption|details|summary|pre|footer)\b|!DOCTYPE)",
        page,
    )


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_to_pandas(grouped):
    _, _, res = grouped
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            res.to_pandas()
        return
    df = res.to_pandas()
    assert list(df.index) == res.names and df.loc[res.names[0], "accuracy"] == res.rows[0]["accuracy"]


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_spectra_section(grouped, population):
    import jaxcompare.spectra as S

    loaded, _, res = grouped
    if not hasattr(S, "analyze_params"):
        assert "spectra" in res.skipped and "not available" in res.skipped["spectra"]
        return
    # the 6x16 hidden layer is below analyze_params' default min_dim: the section says why it was skipped
    if res.spectra is None:
        assert "spectra" in res.skipped
        assert any("spectra" in s for s in res.findings)
    else:
        assert set(res.spectra) == set(res.names)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(params_list=[{"w": np.ones(2)}]), "at least 2 models"),
        (dict(names=["a"]), "names must have one entry per model"),
        (dict(names=["a", "a"]), "names must be unique"),
        (dict(groups=["g"]), "groups must have one entry per model"),
        (dict(groups=["g", "h"]), "needs at least 2 models"),
        (dict(groups=["g", "g"], reference="h"), "reference group 'h' is not among"),
        (dict(reference="g"), "groups must be given"),
        (dict(x_train=np.ones((8, 2))), "x_train and y_train must be given together"),
        (dict(sections=("alpha", "kernels")), "sections"),
        (dict(score="entropy"), "score"),
        (dict(n_boot=0), "n_boot"),
        (dict(y_test=np.array([0, 1, 2, 0, 1, 0, 1, 0])), r"y_test must lie in \[0, 2\)"),
        (dict(y_test=np.zeros(7, int)), "y_test must have length 8"),
        (dict(x_test=np.ones((3, 2)), y_test=np.zeros(3, int)), "at least 4 points"),
        (dict(apply_fn=lambda p, x: x @ p["w"]), r"must return \(N, C\) logits"),
        (dict(apply_fn=lambda p, x: jnp.full((x.shape[0], 2), jnp.nan)), "must be finite"),
    ],
)
def test_compare_models_errors(kwargs, match):
    base = dict(
        apply_fn=lambda p, x: jnp.stack([x @ p["w"], -x @ p["w"]], axis=1),
        params_list=[{"w": np.ones(2)}, {"w": np.array([1.0, 0.5])}],
        x_test=np.random.default_rng(0).standard_normal((8, 2)),
        y_test=np.array([0, 1] * 4),
    )
    base.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        compare_models(
            jax.random.key(0),
            base.pop("apply_fn"),
            base.pop("params_list"),
            base.pop("x_test"),
            base.pop("y_test"),
            **base,
        )


# ---------------------------------------------------------------- the command


@pytest.fixture()
def model_module(tmp_path, monkeypatch):
    (tmp_path / "my_mlp.py").write_text(
        "import jax.numpy as jnp\n"
        "def apply(p, x):\n"
        "    h = jnp.tanh(x @ p['hidden']['kernel'] + p['hidden']['bias'][None, :])\n"
        "    return h @ p['out']['kernel'] + p['out']['bias'][None, :]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_mlp:apply"
    sys.modules.pop("my_mlp", None)


def _parse(argv):
    p = argparse.ArgumentParser(prog="jaxcompare")
    sub = p.add_subparsers(dest="command")
    add_parser(sub)
    return p.parse_args(argv)


@pytest.mark.slow  # shares the trained population (about 45 s on 2 loaded cores)
def test_command_end_to_end(tmp_path, population, model_module, capsys):
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text(
        "checkpoint,group\n" + "".join(f"{n},{g}\n" for n, g in zip(population["names"], population["groups"]))
    )
    out = tmp_path / "out"
    args = _parse(
        [
            "compare",
            "--model",
            model_module,
            "--checkpoints",
            str(population["dir"]),
            "--data",
            str(population["data"]),
            "--groups",
            str(csv_path),
            "--n-boot",
            "40",
            "--sections",
            "alpha",
            "--out",
            str(out),
        ]
    )
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "noisy0" in printed and "report written to" in printed
    res = load_comparison(out)
    assert set(res.atypical) == {n for n in population["names"] if n.startswith("noisy")}
    assert res.settings["command"]["model"] == model_module
    for f in ("index.html", "results.json", "models.csv", "comparison.json", "arrays.npz"):
        assert (out / f).exists()


@pytest.fixture()
def untrained(tmp_path):
    """Three random-weight checkpoints and a data file: enough for the failure paths (they stop before computing)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "untrained"
    d.mkdir()
    names = ["std0", "std1", "noisy0"]
    for n in names:
        save_params(
            {
                "hidden": {"kernel": rng.standard_normal((6, 16)), "bias": np.zeros(16)},
                "out": {"kernel": rng.standard_normal((16, 3)), "bias": np.zeros(3)},
            },
            d / f"{n}.npz",
        )
    data = tmp_path / "data.npz"
    np.savez(data, x_test=rng.standard_normal((20, 6)), y_test=rng.integers(0, 3, 20))
    return {"dir": d, "data": data, "names": names}


def test_command_failures(tmp_path, untrained, model_module):
    population = untrained
    base = [
        "compare",
        "--model",
        model_module,
        "--checkpoints",
        str(population["dir"]),
        "--data",
        str(population["data"]),
        "--out",
        str(tmp_path / "o"),
    ]

    def fails(extra, exc, match, replace=None):
        argv = list(base)
        for k, v in (replace or {}).items():
            argv[argv.index(k) + 1] = v
        with pytest.raises(exc, match=match) as e:
            run(_parse(argv + extra))
        assert "\n" not in str(e.value)

    fails([], ValueError, "--data file not found", {"--data": str(tmp_path / "none.npz")})
    fails([], ValueError, "checkpoints not found", {"--checkpoints": str(tmp_path / "none")})
    np.savez(tmp_path / "d.npz", x_test=np.ones((4, 6)))
    fails([], ValueError, "lacks y_test", {"--data": str(tmp_path / "d.npz")})
    (tmp_path / "g.csv").write_text("std0,standard\n")
    fails(["--groups", str(tmp_path / "g.csv")], ValueError, "no group for checkpoint")
    (tmp_path / "g3.csv").write_text("a,b,c\n")
    fails(["--groups", str(tmp_path / "g3.csv")], ValueError, "expected 'checkpoint,group'")
    fails(["--sections", "kernels"], ValueError, "unknown section")
    fails(["--reference", "standard"], ValueError, "--groups is needed")
    bad = tmp_path / "bad"
    bad.mkdir()
    save_params(
        {
            "hidden": {"kernel": np.ones((6, 16)), "bias": np.ones(16)},
            "out": {"kernel": np.ones((16, 3)), "bias": np.ones(3)},
        },
        bad / "a.npz",
    )
    save_params(
        {
            "hidden": {"kernel": np.ones((6, 8)), "bias": np.ones(8)},
            "out": {"kernel": np.ones((8, 3)), "bias": np.ones(3)},
        },
        bad / "b.npz",
    )
    fails([], ValueError, r"b\.npz: parameter 'hidden/bias' has shape", {"--checkpoints": str(bad)})
    (tmp_path / "out_file").write_text("")
    fails([], ValueError, "--out must be a directory", {"--out": str(tmp_path / "out_file")})


def test_cli_main_exit_2_one_line(tmp_path, untrained, model_module, capsys):
    population = untrained
    from jaxcompare.cli._parser import build_parser

    try:
        build_parser().parse_args(["compare", "--help"])
    except SystemExit:
        pass
    if "usage: jaxcompare compare" not in capsys.readouterr().out:
        pytest.skip("the compare sub-command is not wired into jaxcompare.cli yet")
    from jaxcompare.cli import main

    rc = main(
        [
            "compare",
            "--model",
            model_module,
            "--checkpoints",
            str(population["dir"]),
            "--data",
            str(tmp_path / "none.npz"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxcompare compare: error:")


def test_model_apply_fn_flax_modules():
    pytest.importorskip("flax")
    import flax.linen as nn
    from flax import nnx

    from jaxcompare.cli._compare import model_apply_fn

    x = jnp.ones((3, 4))
    dense = nn.Dense(2)
    variables = dense.init(jax.random.key(0), x)
    fn = model_apply_fn(dense)
    want = x @ variables["params"]["kernel"] + variables["params"]["bias"][None, :]
    np.testing.assert_allclose(fn(variables["params"], x), want, rtol=1e-6)
    np.testing.assert_allclose(fn(variables, x), want, rtol=1e-6)  # a checkpoint saved as {"params": ...}
    lin = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    pure = nnx.to_pure_dict(nnx.state(lin))
    pure2 = jax.tree_util.tree_map(lambda a: 2 * a, pure)
    got = jax.jit(model_apply_fn(lin))(pure2, x)
    np.testing.assert_allclose(got, x @ pure2["kernel"] + pure2["bias"][None, :], rtol=1e-6)
    with pytest.raises(ValueError, match="must name a function"):
        model_apply_fn(3)


def test_spectra_section_with_analysable_layers(tmp_path):
    import jaxcompare.spectra as S

    if not hasattr(S, "analyze_params"):
        pytest.skip("jaxcompare.spectra.analyze_params is not available")
    rng = np.random.default_rng(0)
    ps = [{"w": rng.standard_normal((40, 12))} for _ in range(2)]
    x = rng.standard_normal((30, 40))
    y = rng.integers(0, 12, 30)
    res = compare_models(
        jax.random.key(0), lambda p, x: x @ p["w"], ps, x, y, sections=("spectra",), progress_bar=False
    )
    assert res.skipped == {} and set(res.spectra) == {"model 0", "model 1"}
    layer = res.spectra["model 0"]["layers"][0]
    assert layer["path"] == "w" and layer["n"] == 40 and layer["m"] == 12
    # the largest eigenvalue of W^T W / N, independently
    lam = np.linalg.eigvalsh(ps[0]["w"].T @ ps[0]["w"] / 40)
    assert layer["lambda_max"] == pytest.approx(lam[-1], rel=1e-6)
    assert all("spectral_outliers" in r for r in res.rows) and "alpha_hat" not in res.rows[0]
    assert res.atypical == [] and any("α̂ was not computed" in s for s in res.findings)
    page = open(res.report(tmp_path), encoding="utf-8").read()
    assert "Per-layer weight spectra" in page and "data:image/png" not in page
