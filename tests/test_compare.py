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
        n_kernel_points=64,
        n_permutations=49,
        n_surrogate_train=120,
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
    # the label-noise models' kernels are the least similar to the reference models' (debiased CKA of trNTK)
    assert {r["name"] for r in res.rows if r["flags"]["kernel_dissimilarity"]} == noisy
    assert any(s.startswith("Kernel and α̂ agree on") for s in res.findings)
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
    assert page.count('src="data:image/png;base64,') == 4  # α̂ against 3 metrics, the CKA heatmap
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
        (dict(kernel="em"), "kernel must be one of"),
        (dict(score="entropy"), "score"),
        (dict(n_boot=0), "n_boot"),
        (dict(y_test=np.array([0, 1, 2, 0, 1, 0, 1, 0])), r"y_test must lie in \[0, 2\)"),
        (dict(y_test=np.zeros(7, int)), "y_test must have length 8"),
        (dict(x_test=np.ones((3, 2)), y_test=np.zeros(3, int)), "at least 4 points"),
        (dict(apply_fn=lambda p, x: x @ p["w"]), r"must return \(N, C\) logits"),
        (dict(apply_fn=lambda p, x: jnp.full((x.shape[0], 2), jnp.nan)), "must be finite"),
        # one architecture: a leaf of another shape broadcast silently, a missing leaf failed inside jit
        (dict(params_list=[{"w": np.ones(2)}, {"w": np.ones(1)}]), r"'model 1'\['w'\] has shape \(1,\)"),
        (dict(params_list=[{"w": np.ones(2)}, {"v": np.ones(2)}]), "one structure"),
        (dict(params_list={"a": {"w": np.ones(2)}, "b": {"w": np.ones(2)}}, names=["x", "y"]), "its keys are"),
        (dict(groups=[1, "1"]), r"different values with one name: \['1'\]"),  # were merged into one group
        (dict(groups="gg"), "got the string 'gg'"),
        (
            dict(x_train=np.ones((6, 2)), y_train=np.array([0, 1] * 3), sections=("surrogate",), attribution_k=7),
            r"attribution_k \(7\) must be at most the surrogates' training points \(6",  # was clipped to 6
        ),
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


def test_compare_models_takes_a_dict_of_models_and_one_section_name():
    """A dict name -> params names the models by its keys (its iteration gave the names as params); a section given
    as one string is that section (it was split into letters: "got 'a'")."""
    x = np.random.default_rng(0).standard_normal((40, 2))
    y = (x[:, 0] > 0).astype(int)
    fn = lambda p, x: jnp.stack([x @ p["w"], -x @ p["w"]], axis=1)  # noqa: E731
    ps = {f"m{i}": {"w": np.array([1.0, 0.1 * i])} for i in range(3)}
    res = compare_models(jax.random.key(0), fn, ps, x, y, sections="alpha", n_boot=5, progress_bar=False)
    assert [r["name"] for r in res.rows] == ["m0", "m1", "m2"] and res.settings["sections"] == ["alpha"]
    ref = compare_models(jax.random.key(0), fn, list(ps.values()), x, y, sections=("alpha",), n_boot=5,
                         names=list(ps), progress_bar=False)  # fmt: skip
    assert [r["accuracy"] for r in res.rows] == [r["accuracy"] for r in ref.rows]


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
    args_list = [
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
        "similarity",
        "--kernel-points",
        "32",
        "--permutations",
        "9",
        "--out",
        str(out),
    ]
    args = _parse(args_list)
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "noisy0" in printed and "report written to" in printed
    res = load_comparison(out)
    assert set(res.atypical) == {n for n in population["names"] if n.startswith("noisy")}
    assert res.settings["command"]["model"] == model_module
    assert res.similarity["n_points"] == 32 and res.similarity["n_permutations"] == 9 and res.surrogate is None
    for f in ("index.html", "results.json", "models.csv", "comparison.json", "arrays.npz"):
        assert (out / f).exists()
    # the rerun reads every model's logits (x_test, x_train) and similarity kernel from OUT/cache
    k = len(population["names"])
    assert run(args) == 0 and f"{3 * k} arrays read from {out / 'cache'}" in capsys.readouterr().out
    assert load_comparison(out).to_dict()["models"] == res.to_dict()["models"]
    assert run(_parse([*args_list, "--no-cache"])) == 0 and "read from" not in capsys.readouterr().out


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
    # a plain .npy ('ndarray' does not support the context manager protocol), a non-zip and a damaged .npz
    # (BadZipFile, CRC) named no file
    np.save(tmp_path / "x.npy", np.ones((4, 6)))
    fails(
        [], ValueError, r"--data \S*x\.npy holds a single array of shape \(4, 6\)", {"--data": str(tmp_path / "x.npy")}
    )
    good = population["data"].read_bytes()
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "half.npz").write_bytes(good[: len(good) // 2])
    damaged = bytearray(good)
    damaged[120:180] = bytes(60)  # inside x_test's data: the member's CRC fails
    (tmp_path / "crc.npz").write_bytes(bytes(damaged))
    for name in ("junk.npz", "half.npz", "crc.npz"):
        fails([], ValueError, rf"--data \S*{name} is not a readable \.npz", {"--data": str(tmp_path / name)})
    (tmp_path / "g.csv").write_text("std0,standard\n")
    fails(["--groups", str(tmp_path / "g.csv")], ValueError, "no group for checkpoint")
    (tmp_path / "g3.csv").write_text("a,b,c\n")
    fails(["--groups", str(tmp_path / "g3.csv")], ValueError, "expected 'checkpoint,group'")
    fails(["--sections", "kernels"], ValueError, "unknown section")
    fails(["--kernel-points", "3"], ValueError, "--kernel-points must be >= 4")
    fails(["--permutations", "0"], ValueError, "--permutations must be >= 1")
    fails(["--surrogate-train", "1"], ValueError, "--surrogate-train must be >= 2")
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
    assert "Per-layer weight spectra" in page
    if importlib.util.find_spec("matplotlib") is not None:  # the per-layer overview only: no α̂, no kernels
        assert page.count("data:image/png") == 1 and (tmp_path / "spectra_overview.png").stat().st_size > 1000


def test_spectra_options_read_stacked_layers_and_are_checked_before_the_models_run(tmp_path):
    """Layers stacked by nn.scan: spectra_options={"stacked": ...} gives one row per layer, whose largest
    eigenvalue is that of the layer's own matrix (NumPy); without it the kernel is one (L·d, d) matrix and the
    warning reaches settings and the page. Bad options raise before apply_fn is called."""
    rng = np.random.default_rng(1)
    n_layers, d = 3, 24
    ps = [
        {"ScanBlock": {"Dense_0": {"kernel": rng.standard_normal((n_layers, d, d)), "bias": np.zeros((n_layers, d))}}}
        for _ in range(2)
    ]
    calls = []

    def fn(p, x):
        calls.append(1)
        h = x
        for j in range(n_layers):
            h = jnp.tanh(h @ p["ScanBlock"]["Dense_0"]["kernel"][j] + p["ScanBlock"]["Dense_0"]["bias"][j][None, :])
        return h[:, :4]

    x = rng.standard_normal((30, d))
    y = rng.integers(0, 4, 30)
    res = compare_models(
        jax.random.key(0), fn, ps, x, y, sections=("spectra",), spectra_options={"stacked": "ScanBlock"},
        progress_bar=False,
    )  # fmt: skip
    layers = res.spectra["model 1"]["layers"]
    assert [lay["path"] for lay in layers] == [f"ScanBlock/Dense_0/kernel[{j}]" for j in range(n_layers)]
    for j, lay in enumerate(layers):
        w = ps[1]["ScanBlock"]["Dense_0"]["kernel"][j]
        assert lay["lambda_max"] == pytest.approx(np.linalg.eigvalsh(w.T @ w / d)[-1], rel=1e-6)
    assert res.settings["spectra_options"]["stacked"] == "ScanBlock" and res.settings["spectra_warnings"] == []
    assert {lay["note"] for lay in layers} == {""}  # not "pass a key for the p-value": the section has no key
    assert "stacked=ScanBlock" in open(res.report(tmp_path / "a"), encoding="utf-8").read()

    with pytest.warns(UserWarning, match="looks stacked"):
        plain = compare_models(jax.random.key(0), fn, ps, x, y, sections=("spectra",), progress_bar=False)
    assert [lay["shape"] for lay in plain.spectra["model 0"]["layers"]] == [[n_layers, d, d]]
    (warning,) = plain.settings["spectra_warnings"]  # one warning for the two models
    assert "looks stacked" in warning and "Pass spectra_options={'stacked': 'ScanBlock'} (CLI --stacked" in warning
    assert "looks stacked" in open(plain.report(tmp_path / "b"), encoding="utf-8").read()

    calls.clear()
    for opts, err in (
        ({"stacked": "NoSuchModule"}, "matched no parameter"),
        ({"heads": "both"}, "heads"),
        ({"n_boot": 10}, "unknown option"),
    ):
        with pytest.raises(ValueError, match=err):
            compare_models(jax.random.key(0), fn, ps, x, y, sections=("spectra",), spectra_options=opts)
    with pytest.raises(TypeError, match="mapping"):
        compare_models(jax.random.key(0), fn, ps, x, y, sections=("spectra",), spectra_options="ScanBlock")
    with pytest.raises(ValueError, match="not in sections"):
        compare_models(jax.random.key(0), fn, ps, x, y, sections=("alpha",), spectra_options={"heads": "split"})
    assert calls == []  # refused before any model was evaluated


# ---------------------------------------------------------------- the kernel sections (similarity, surrogate)


def _tiny_mlp(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]


def _trntk_oracle(p, x):
    """trNTK in float64 (x64 is on in the tests) from per-example Jacobians (jax.jacrev of the model, not the
    package's kernels)."""
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
    jac = jax.jacrev(lambda q: _tiny_mlp(q, jnp.asarray(x, jnp.float64)))(p64)  # leaves (N, C, *shape)
    g = np.concatenate([np.asarray(v).reshape(x.shape[0], -1) for v in jax.tree_util.tree_leaves(jac)], axis=1)
    k = g @ g.T  # Σ_c <∇f_c(x), ∇f_c(x')>: the class axis is folded into the flattened gradient
    d = np.sqrt(np.diag(k))
    return k / np.outer(d, d)


def _debiased_cka(k, l):
    """CKA with the unbiased HSIC of Song et al. (2012), written out in NumPy."""

    def hsic(a, b):
        n = a.shape[0]
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        t = (
            np.trace(a @ b)
            + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ a @ b @ one)
        )
        return t / (n * (n - 3))

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture(scope="module")
def tiny_kernel_run():
    rng = np.random.default_rng(5)
    ps = [
        {"w1": rng.standard_normal((5, 8)).astype(np.float32), "w2": rng.standard_normal((8, 3)).astype(np.float32)}
        for _ in range(4)
    ]
    ps[3]["w1"] = ps[3]["w1"] * 4.0  # a saturated model: its kernel differs most
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    xt = rng.standard_normal((30, 5)).astype(np.float32)
    yt = rng.integers(0, 3, 30).astype(np.int32)
    res = compare_models(
        jax.random.key(2), _tiny_mlp, ps, x, y, x_train=xt, y_train=yt, groups=["r", "r", "r", "c"],
        sections=("similarity", "surrogate"), n_kernel_points=24, n_permutations=19, n_surrogate_train=20,
        attribution_k=4, n_attribution=2, progress_bar=False,
    )  # fmt: skip
    return ps, x, y, xt, yt, res


def test_similarity_section_against_numpy(tiny_kernel_run):
    ps, x, y, _, _, res = tiny_kernel_run
    pts = res.arrays["kernel_points"]
    assert pts.shape == (24,) and len(set(pts.tolist())) == 24 and res.settings["n_kernel_points"] == 24
    ks = [_trntk_oracle(p, x[pts]) for p in ps]
    want = np.array([[_debiased_cka(a, b) for b in ks] for a in ks])
    sim = res.similarity
    np.testing.assert_allclose(np.array(sim["cka"]), want, atol=2e-4)
    p = np.array(sim["p_value"])
    assert sim["n_permutations"] == 19 and np.all(p >= 1 / 20 - 1e-7) and np.all(p <= 1)
    refs = {0: [1, 2], 1: [0, 2], 2: [0, 1], 3: [0, 1, 2]}  # reference models leave-one-out, the candidate: all
    mean = np.array([want[i, refs[i]].mean() for i in range(4)])
    got = np.array([r["kernel_cka"] for r in res.rows])
    np.testing.assert_allclose(got, mean, atol=2e-4)
    np.testing.assert_allclose([r["kernel_dissimilarity"] for r in res.rows], 1 - got, atol=1e-12)
    # the rule, written out: above the reference range and median + 3·max(robust sd, null sd floor)
    v = 1 - mean[:3]
    floor = np.median(np.array(sim["null_sd"])[~np.eye(4, dtype=bool)])
    bound = max(np.median(v) + 3 * max(1.4826 * np.median(np.abs(v - np.median(v))), floor), v.max())
    assert res.bounds["kernel_dissimilarity"]["bound"] == pytest.approx(bound, abs=2e-4)
    assert [r["flags"]["kernel_dissimilarity"] for r in res.rows] == list(
        1 - got > res.bounds["kernel_dissimilarity"]["bound"]
    )
    least = res.rows[int(np.argmin(mean))]["name"]
    assert any(s.startswith("Kernel similarity") and f"is {least}'s" in s for s in res.findings)
    assert "alpha_hat" not in res.rows[0] and any(d["statistic"] == "kernel_dissimilarity" for d in res.detection)


def test_surrogate_section_wiring(tiny_kernel_run):
    ps, x, y, xt, yt, res = tiny_kernel_run
    pts, tr = res.arrays["kernel_points"], res.arrays["surrogate_train_points"]
    assert tr.shape == (20,) and res.settings["n_surrogate_train"] == 20
    pred = res.arrays["surrogate_predictions"]
    for i, r in enumerate(res.rows):
        net = np.asarray(_tiny_mlp(ps[i], x[pts])).argmax(1)
        assert r["surrogate_accuracy"] == pytest.approx((pred[i] == y[pts]).mean(), abs=1e-6)
        assert r["surrogate_tad"] == pytest.approx((pred[i] == y[pts]).mean() - (net == y[pts]).mean(), abs=1e-6)
        assert -1 <= r["surrogate_tau"] <= 1 and 0 <= r["surrogate_r_miss"] <= 1
    idx = res.arrays["attribution_indices"]  # (K, n, k) indices into x_train
    assert idx.shape == (4, 24, 4) and set(np.unique(idx)) <= set(tr.tolist())
    refs = {0: [1, 2], 1: [0, 2], 2: [0, 1], 3: [0, 1, 2]}
    for i, r in enumerate(res.rows):
        jac = [
            len(set(idx[i, t]) & set(idx[j, t])) / len(set(idx[i, t]) | set(idx[j, t]))
            for j in refs[i]
            for t in range(24)
        ]
        assert r["attribution_overlap"] == pytest.approx(np.mean(jac), abs=1e-12)
    table = res.surrogate["attribution"]
    assert len(table) == 2 and res.surrogate["attribution_k"] == 4
    for item in table:
        t = int(np.flatnonzero(pts == item["test_index"])[0])
        assert item["label"] == y[item["test_index"]]
        for i, m in enumerate(item["models"]):
            assert [e["train_index"] for e in m["top"]] == idx[i, t].tolist()
            assert [e["label"] for e in m["top"]] == yt[idx[i, t]].tolist()
            assert m["surrogate_prediction"] == pred[i, t]
            vals = [e["contribution"] for e in m["top"]]
            assert vals == sorted(vals, reverse=True)
    assert any(s.startswith("Kernel surrogates") for s in res.findings)


def test_kernel_sections_saved_and_reported(tmp_path, tiny_kernel_run):
    *_, res = tiny_kernel_run
    back = load_comparison(res.save(tmp_path / "saved"))
    assert back.to_dict() == res.to_dict() and back.similarity["cka"] == res.similarity["cka"]
    np.testing.assert_array_equal(back.arrays["attribution_indices"], res.arrays["attribution_indices"])
    page = open(res.report(tmp_path / "rep"), encoding="utf-8").read()
    assert "<h2>Kernel similarity</h2>" in page and "Kernel surrogates: faithfulness and attribution" in page
    if importlib.util.find_spec("matplotlib") is not None:
        assert page.count('src="data:image/png;base64,') == 1  # the heatmap (no α̂ figures without "alpha")
        assert (tmp_path / "rep" / "kernel_similarity.png").stat().st_size > 1000
    with open(tmp_path / "rep" / "models.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"kernel_cka", "kernel_dissimilarity", "surrogate_tau", "surrogate_tad", "attribution_overlap"} <= set(
        rows[0]
    )
    assert float(rows[3]["kernel_cka"]) == pytest.approx(res.rows[3]["kernel_cka"])
    data = json.load(open(tmp_path / "rep" / "results.json"))
    assert data["settings"]["n_permutations"] == 19 and data["settings"]["kernel"] == "trntk"
    assert len(data["similarity"]["cka"]) == 4 and data["surrogate"]["n_train"] == 20


def test_cache_dir_resumes_an_interrupted_comparison(tmp_path, tiny_kernel_run, monkeypatch):
    """A comparison killed in its last section lost every logit and kernel computed before. With cache_dir each
    model's arrays are kept as they are computed: the rerun reads them and gives the result of a run without a
    cache (the oracle: the same call without cache_dir), entry for entry; a changed model recomputes only its own
    entries; a damaged entry is recomputed with a warning; another apply_fn never reads them."""
    from jaxcompare import surrogate

    ps, x, y, xt, yt, plain = tiny_kernel_run
    kw = dict(
        x_train=xt, y_train=yt, groups=["r", "r", "r", "c"], sections=("similarity", "surrogate"),
        n_kernel_points=24, n_permutations=19, n_surrogate_train=20, attribution_k=4, n_attribution=2,
        progress_bar=False,
    )  # fmt: skip
    cache = tmp_path / "cache"
    real, fits = surrogate.fit_kglm, []

    def killed_at_the_third_surrogate(*a, **k):
        fits.append(1)
        if len(fits) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(surrogate, "fit_kglm", killed_at_the_third_surrogate)
    with pytest.raises(KeyboardInterrupt):
        compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, cache_dir=cache, **kw)
    monkeypatch.undo()
    # 4 models: logits on x_test and x_train, similarity kernels, and the surrogate kernels of 3 models
    assert len(list(cache.glob("*.npy"))) == 4 + 4 + 4 + 2 * 3
    resumed = compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, cache_dir=cache, **kw)
    assert (resumed.settings["cache_read"], resumed.settings["cache_computed"]) == (18, 2)
    strip = lambda d: {**d, "settings": {k: v for k, v in d["settings"].items() if not k.startswith("cache")}}  # noqa: E731
    assert strip(resumed.to_dict()) == plain.to_dict()
    for name, a in plain.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[name], a)

    changed = [dict(p) for p in ps]
    changed[1]["w2"] = changed[1]["w2"] * 1.5
    again = compare_models(jax.random.key(2), _tiny_mlp, changed, x, y, cache_dir=cache, **kw)
    assert (again.settings["cache_read"], again.settings["cache_computed"]) == (15, 5)  # model 1's five entries
    fresh = compare_models(jax.random.key(2), _tiny_mlp, changed, x, y, **kw)
    assert strip(again.to_dict()) == fresh.to_dict()

    victim = max(cache.glob("*.npy"), key=lambda f: f.stat().st_mtime_ns)  # one of changed model 1's entries
    a = np.load(victim)
    a.flat[0] += 1.0
    np.save(victim, a)
    with pytest.warns(RuntimeWarning, match="does not match its record"):
        repaired = compare_models(jax.random.key(2), _tiny_mlp, changed, x, y, cache_dir=cache, **kw)
    assert repaired.settings["cache_computed"] == 1 and strip(repaired.to_dict()) == fresh.to_dict()

    other = compare_models(jax.random.key(2), lambda p, x: _tiny_mlp(p, x) * 2.0, ps, x, y, cache_dir=cache, **kw)
    assert other.settings["cache_read"] == 0
    with pytest.raises(ValueError, match="is an existing file"):
        compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, cache_dir=victim, **kw)


_BWD_SCALE = 1.0


@jax.custom_vjp
def _act(z):
    return jnp.tanh(z)


def _act_fwd(z):
    return jnp.tanh(z), z


def _act_bwd(z, g):
    return (_BWD_SCALE * g * (1.0 - jnp.tanh(z) ** 2),)


_act.defvjp(_act_fwd, _act_bwd)


def _custom_mlp(p, x):
    return _act(x @ p["w1"]) @ p["w2"]


def test_cache_entries_name_what_they_are_computed_from(tmp_path, tiny_kernel_run, monkeypatch):
    """What helper audits found the cache keyed or kept wrongly: a changed custom backward rule (same code, same
    forward) read the old kernels; a model that needs whole batches was traced on one row; 16-bit logits failed
    the probability checks; an entry that is a zip archive crashed the read; NaN logits were kept; an entry of
    another format version was called damaged; a refused run left an empty cache directory. Oracles: the same
    calls without a cache, and the arrays on disk."""
    ps, x, y, *_ = tiny_kernel_run
    kw = dict(sections=("similarity",), n_kernel_points=24, n_permutations=19, progress_bar=False)
    cache = tmp_path / "cache"
    first = compare_models(jax.random.key(2), _custom_mlp, ps, x, y, cache_dir=cache, **kw)
    assert first.settings["cache_computed"] == 8  # logits and similarity kernel of 4 models
    monkeypatch.setattr(sys.modules[__name__], "_BWD_SCALE", 3.0)  # the backward rule changes, the forward not
    changed = compare_models(jax.random.key(2), _custom_mlp, ps, x, y, cache_dir=cache, **kw)
    assert changed.settings["cache_read"] == 0
    plain = compare_models(jax.random.key(2), _custom_mlp, ps, x, y, **kw)
    assert changed.similarity["cka"] == plain.similarity["cka"]
    monkeypatch.undo()

    def paired(p, xb):  # rows come in pairs (no kernel of it): a batch of one row cannot be traced
        pairs = xb.reshape(-1, 2, xb.shape[1]).mean(axis=1)
        return jnp.repeat(_tiny_mlp(p, pairs), 2, axis=0) + _tiny_mlp(p, xb)

    alpha = dict(sections=("alpha",), n_boot=20, progress_bar=False)
    one = compare_models(jax.random.key(2), paired, ps, x, y, cache_dir=cache, batch_size=8, **alpha)
    again = compare_models(jax.random.key(2), paired, ps, x, y, cache_dir=cache, batch_size=8, **alpha)
    assert (one.settings["cache_computed"], again.settings["cache_read"]) == (4, 4)

    def half(p, xb):
        return _tiny_mlp(p, xb).astype(jnp.bfloat16)

    widened = compare_models(jax.random.key(2), lambda p, xb: half(p, xb).astype(jnp.float32), ps, x, y, **alpha)
    for cache_dir in (None, tmp_path / "bf16"):
        res = compare_models(jax.random.key(2), half, ps, x, y, cache_dir=cache_dir, **alpha)
        assert [r["alpha_hat"] for r in res.rows] == [r["alpha_hat"] for r in widened.rows]

    entries = sorted(cache.glob("*.npy"), key=lambda f: f.stat().st_mtime_ns)[-2:]  # two of paired's logits
    np.savez(entries[0], a=np.load(entries[0]))  # a zip archive under the entry's name
    os.replace(str(entries[0]) + ".npz", entries[0])
    meta = entries[1].with_suffix(".json")
    meta.write_text(meta.read_text().replace('"version": 1', '"version": 0'))
    with pytest.warns(RuntimeWarning) as seen:
        compare_models(jax.random.key(2), paired, ps, x, y, cache_dir=cache, batch_size=8, **alpha)
    said = " ".join(str(w.message) for w in seen)
    assert "does not match its record" in said and "another cache format (version 0, this one 1)" in said

    def nan_logits(p, xb):
        return _tiny_mlp(p, xb) * jnp.nan

    fresh = tmp_path / "never" / "made"
    with pytest.raises(ValueError, match="logits of model 0"):
        compare_models(jax.random.key(2), nan_logits, ps, x, y, cache_dir=fresh, **kw)
    assert not (tmp_path / "never").exists()
    before = len(list(cache.glob("*.npy")))
    with pytest.raises(ValueError, match="logits of model 0"):
        compare_models(jax.random.key(2), nan_logits, ps, x, y, cache_dir=cache, **kw)
    assert len(list(cache.glob("*.npy"))) == before


def test_projected_kernel_sections(tiny_kernel_run):
    """projection=: both kernel sections on the kernel of projected gradients, one projection for all models.
    Oracle: each model's kernel from jc.trace_ntk(f, projection=proj) on the same points and NumPy's debiased CKA
    of those; the projected CKA is close to the exact run's (dim 4096)."""
    import jaxcompare as jc

    ps, x, y, xt, yt, exact = tiny_kernel_run
    proj = jc.structured_projection(jax.random.key(7), 4096)
    res = compare_models(
        jax.random.key(2), _tiny_mlp, ps, x, y, x_train=xt, y_train=yt, groups=["r", "r", "r", "c"],
        sections=("similarity", "surrogate"), n_kernel_points=24, n_permutations=19, n_surrogate_train=20,
        attribution_k=4, n_attribution=2, progress_bar=False, projection=proj,
    )  # fmt: skip
    assert res.similarity["kernel"] == "proj_trntk" and res.surrogate["kernel"] == "proj_trntk"
    assert "StructuredProjection" in res.settings["projection"]
    idx = res.arrays["kernel_points"]
    ks = [np.asarray(jc.trace_ntk(_tiny_mlp, projection=proj)(p, x[idx]), np.float64) for p in ps]
    want = np.array([[_debiased_cka(a, b) for b in ks] for a in ks])
    np.testing.assert_allclose(np.asarray(res.similarity["cka"]), want, atol=1e-5)
    assert np.abs(np.asarray(res.similarity["cka"]) - np.asarray(exact.similarity["cka"])).max() < 0.05
    with pytest.raises(ValueError, match="no projected variant"):
        compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, sections=("similarity",), kernel="trntk0",
                       projection=proj)  # fmt: skip
    with pytest.raises(TypeError, match="projection must come from"):
        compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, sections=("similarity",), projection="sparse")
    with pytest.raises(ValueError, match="applies to the kernel sections"):
        compare_models(jax.random.key(2), _tiny_mlp, ps, x, y, sections=("alpha",), projection=proj)


def test_surrogate_training_points_hold_every_class():
    """The surrogates' training subsample was plain: 256 of 512 points could miss a class of 10, and the balanced
    kGLM failed after every kernel was computed. Now the subsample holds a point of each class, and training
    labels without some class (or too few training points for the classes) are refused before any kernel."""
    from jaxcompare.compare._kernels import covering_subsample

    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 7, 497), [7, 8, 9]])  # three classes of one point each
    seen = set()
    for seed in range(200):
        idx = covering_subsample(jax.random.key(seed), labels, 12)
        assert idx.size == 12 and np.unique(idx).size == 12 and np.all(np.diff(idx) > 0)
        assert set(labels[idx].tolist()) == set(range(10))
        seen.add(tuple(idx))
    assert len(seen) == 200  # random subsets, not one fixed set
    one = covering_subsample(jax.random.key(3), labels, 12)
    np.testing.assert_array_equal(covering_subsample(jax.random.key(3), labels, 12), one)  # same key, same subset
    np.testing.assert_array_equal(covering_subsample(jax.random.key(0), labels[:5], 12), np.arange(5))

    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    xt = rng.standard_normal((60, 5)).astype(np.float32)
    yt = np.concatenate([rng.integers(0, 2, 59), [2]])  # class 2: one training point
    ps = [{"w1": rng.standard_normal((5, 8)), "w2": rng.standard_normal((8, 3))} for _ in range(3)]
    kw = dict(sections=("surrogate",), n_kernel_points=8, n_surrogate_train=6, attribution_k=2, progress_bar=False)
    res = compare_models(jax.random.key(0), _tiny_mlp, ps, x, y, x_train=xt, y_train=yt, **kw)
    assert 59 in res.arrays["surrogate_train_points"].tolist() and res.surrogate["n_train"] == 6
    with pytest.raises(ValueError, match=r"no point of class\(es\) \[2\] of the models' 3"):
        compare_models(jax.random.key(0), _tiny_mlp, ps, x, y, x_train=xt, y_train=np.where(yt == 2, 0, yt), **kw)
    with pytest.raises(ValueError, match="cannot hold one training point of each of the 3 classes"):
        compare_models(jax.random.key(0), _tiny_mlp, ps, x, y, x_train=xt, y_train=yt, **{**kw, "n_surrogate_train": 2})


def test_kernel_sections_selection_and_errors():
    rng = np.random.default_rng(0)
    ps = [{"w1": rng.standard_normal((5, 8)), "w2": rng.standard_normal((8, 3))} for _ in range(3)]
    x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
    res = compare_models(
        jax.random.key(0), _tiny_mlp, ps, x, y, sections=("surrogate",), n_permutations=3, progress_bar=False
    )
    assert res.surrogate is None and res.similarity is None and "x_train" in res.skipped["surrogate"]
    assert "kernel_points" not in res.arrays and "kernel_cka" not in res.rows[0]
    for kwargs, match in [
        (dict(kernel="entk"), "kernel must be one of"),
        (dict(kernel="ck"), "kernel must be one of"),
        (dict(n_kernel_points=3), "n_kernel_points"),
        (dict(n_permutations=0), "n_permutations"),
        (dict(n_surrogate_train=1), "n_surrogate_train"),
        (dict(attribution_k=0), "attribution_k"),
    ]:
        with pytest.raises(ValueError, match=match):
            compare_models(jax.random.key(0), _tiny_mlp, ps, x, y, progress_bar=False, **kwargs)


# ---------------------------------------------------------------- per-layer spectra figures, one per layer group


def _rows_only(params):
    """A LayerSpectra with only the columns the grouping reads (path, matrix kind, shape): no eigenvalues needed."""
    from jaxcompare.spectra import LayerSpectra

    rows = []
    for kp, leaf in jax.tree_util.tree_leaves_with_path(params):
        path = "/".join(str(k.key) for k in kp)
        rows.append({"path": path, "shape": leaf.shape, "matrix": "dense" if leaf.ndim == 2 else "conv flatten"})
    return LayerSpectra(rows=tuple(rows), skipped=(), eigenvalues={}, settings={})


def _resnet_like(rng):
    """A flax-style tree: stem, 11 blocks over 3 widths (dict keys sort Block_10 before Block_2), attention, MLP,
    embedding, head."""
    p = {
        "stem": {"kernel": rng.standard_normal((3, 3, 3, 16))},
        "embed_tokens": {"embedding": rng.standard_normal((50, 16))},
    }
    widths = [16] * 4 + [32] * 3 + [64] * 4
    cin = 16
    for i, c in enumerate(widths):
        p[f"Block_{i}"] = {"Conv_0": {"kernel": rng.standard_normal((3, 3, cin, c))}}
        cin = c
    p["attn"] = {n: {"kernel": rng.standard_normal((64, 64))} for n in ("query", "key", "value", "out")}
    p["mlp"] = {"fc1": {"kernel": rng.standard_normal((64, 128))}, "fc2": {"kernel": rng.standard_normal((128, 64))}}
    p["head"] = {"kernel": rng.standard_normal((64, 10))}
    return p


def test_layer_groups_rule():
    from jaxcompare.spectra._layer_plots import group_file_name, layer_groups

    res = _rows_only(_resnet_like(np.random.default_rng(0)))
    groups = layer_groups(res)
    want = {
        "embeddings": ("embed_tokens/embedding",),
        "convolutions, 16 output channels": tuple(f"Block_{i}/Conv_0/kernel" for i in range(4)) + ("stem/kernel",),
        "convolutions, 32 output channels": tuple(f"Block_{i}/Conv_0/kernel" for i in (4, 5, 6)),
        "convolutions, 64 output channels": tuple(f"Block_{i}/Conv_0/kernel" for i in (7, 8, 9, 10)),
        "attention": tuple(f"attn/{n}/kernel" for n in ("key", "out", "query", "value")),
        "MLP": ("mlp/fc1/kernel", "mlp/fc2/kernel"),
        "dense layers": ("head/kernel",),
    }
    assert groups == want and list(groups) == list(want)
    parts = layer_groups(res, max_panels=2)
    assert list(parts)[1:4] == [f"convolutions, 16 output channels (part {i}/3)" for i in (1, 2, 3)]
    assert [len(v) for k, v in parts.items() if k.startswith("convolutions, 16")] == [2, 2, 1]
    flat = [p for v in parts.values() for p in v]
    assert sorted(flat) == sorted(r["path"] for r in res.rows) and len(flat) == len(set(flat))
    assert (
        group_file_name("convolutions, 16 output channels (part 1/3)")
        == "spectra_convolutions_16_output_channels_part_1_3.png"
    )
    with pytest.raises(ValueError, match="max_panels"):
        layer_groups(res, max_panels=0)
    with pytest.raises(TypeError, match="LayerSpectra"):
        layer_groups({"w": np.ones((3, 3))})


def test_plot_layer_groups_and_overview(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from jaxcompare.spectra import analyze_params
    from jaxcompare.spectra._layer_plots import group_file_name, layer_groups, plot_layer_groups, plot_layer_overview

    rng = np.random.default_rng(1)
    conv = lambda: {"Conv_0": {"kernel": rng.standard_normal((3, 3, 12, 12))}}  # noqa: E731
    params = {f"Block_{i}": conv() for i in (0, 1, 2, 10)}
    params.update(
        attn={"query": {"kernel": rng.standard_normal((12, 12))}}, head={"kernel": rng.standard_t(3, (40, 12))}
    )
    res = analyze_params(params)
    figs = plot_layer_groups(res, directory=str(tmp_path), max_panels=3)
    groups = layer_groups(res, max_panels=3)
    assert [len(v) for v in groups.values()] == [2, 2, 1, 1]  # 4 convolutions in 2 parts, attention, dense
    assert list(figs) == list(groups)
    for label, fig in figs.items():
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title().split("\n")[0] for ax in axes] == list(groups[label])
        assert fig._suptitle.get_text().startswith(label)
        assert (tmp_path / group_file_name(label)).stat().st_size > 1000
    plt.close("all")
    fig = plot_layer_overview(  # the three accepted forms of a model's layers
        {"a": res, "b": res.to_dict(eigenvalues=False), "c": list(res.rows)}, groups={"a": "g1", "b": "g2", "c": "g2"}
    )
    a_ax, r_ax, o_ax = fig.axes
    assert len(o_ax.get_xticks()) == len(res.rows) and len(a_ax.get_lines()) == 3
    assert [t.get_text() for t in a_ax.get_legend().get_texts()] == ["g1", "g2", "2 ≤ α ≤ 6"]
    # the stable rank line of model "a", in natural path order, against Σλ/λmax of its eigenvalues
    ticks = [t.get_text() for t in o_ax.get_xticklabels()]
    assert ticks == [f"Block_{i}/Conv_0" for i in (0, 1, 2, 10)] + ["attn/query", "head"]  # numbers as numbers
    y = r_ax.get_lines()[0].get_ydata()
    x = r_ax.get_lines()[0].get_xdata().astype(int)
    lam = {p: np.asarray(v, np.float64) for p, v in res.eigenvalues.items()}
    order = sorted(lam, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])
    for xi, yi in zip(x, y):
        v = lam[order[xi]]
        assert yi == pytest.approx(v.sum() / v.max(), rel=1e-9)
    plt.close(fig)
    with pytest.raises(ValueError, match="groups has no group"):
        plot_layer_overview({"a": res}, groups={"b": "g"})


def test_spectra_command_writes_group_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from jaxcompare.cli import main

    rng = np.random.default_rng(3)
    ck = save_params(
        {"conv": {"kernel": rng.standard_normal((3, 3, 8, 24))}, "head": {"kernel": rng.standard_normal((40, 12))}},
        tmp_path / "m.npz",
    )
    assert main(["spectra", "--checkpoint", str(ck), "--n-boot", "3", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    for f in ("spectra.png", "spectra_convolutions_24_output_channels.png", "spectra_dense_layers.png"):
        assert (tmp_path / "o" / f).stat().st_size > 1000 and (f == "spectra.png" or f in out)


def test_command_checks_out_and_seed_before_any_work(tmp_path, untrained, model_module, capsys):
    """An unwritable --out failed after the whole comparison; a run that failed on its data left an empty --out
    behind; --seed -1 was accepted (every other command refuses it)."""
    from jaxcompare.cli import main

    base = ["compare", "--model", model_module, "--checkpoints", str(untrained["dir"]), "--data"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_test=np.ones((20, 6)), y_test=np.full(20, 0.5))
    unwritable = tmp_path / "a_file" / "o"  # a directory that cannot be made (root may write anywhere else)
    (tmp_path / "a_file").write_text("")
    rc = main([*base, str(bad), "--out", str(unwritable)])
    assert rc == 2 and "--out" in capsys.readouterr().err  # the output, not the data, fails first
    rc = main([*base, str(bad), "--out", str(tmp_path / "fresh")])
    assert rc == 2 and not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit):
        main([*base, str(untrained["data"]), "--out", str(tmp_path / "s"), "--seed", "-1"])
    assert "seed" in capsys.readouterr().err
    # the spectra section's layout options: checked before the models run, refused where they cannot apply
    rc = main([*base, str(untrained["data"]), "--out", str(tmp_path / "t"), "--sections", "alpha", "--stacked", "X"])
    assert rc == 2 and "--stacked apply to the spectra section" in capsys.readouterr().err
    rc = main([*base, str(untrained["data"]), "--out", str(tmp_path / "t"), "--sections", "alpha", "--conv", "slices",
               "--heads", "split"])  # fmt: skip
    assert rc == 2 and "--conv, --heads apply to the spectra section" in capsys.readouterr().err
    rc = main([*base, str(untrained["data"]), "--out", str(tmp_path / "u"), "--sections", "spectra", "--stacked", "X"])
    assert rc == 2 and "matched no parameter" in capsys.readouterr().err and not (tmp_path / "u").exists()
    rc = main([*base, str(untrained["data"]), "--out", str(tmp_path / "v"), "--sections", "alpha", "--projection",
               "structured"])  # fmt: skip
    assert rc == 2 and "--projection applies to the kernel sections" in capsys.readouterr().err
    rc = main([*base, str(untrained["data"]), "--out", str(tmp_path / "w"), "--sections", "similarity",
               "--projection", "sparse", "--dim", "256", "--kernel-points", "8", "--permutations", "3"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert load_comparison(tmp_path / "w").similarity["kernel"] == "proj_trntk"


def _tiny_results():
    x = jnp.linspace(-1, 1, 32)[:, None]
    y = (x[:, 0] > 0).astype(jnp.int32)
    fn = lambda p, x: jnp.concatenate([-p * x, p * x], axis=1)  # noqa: E731
    make = lambda ps: compare_models(jax.random.key(0), fn, ps, x, y, n_boot=5, sections=("alpha",), progress_bar=False)  # noqa: E731
    return make([1.0, 2.0, 3.0]), make([1.0, -2.0])


def test_saved_comparison_files_must_belong_together(tmp_path, monkeypatch):
    """save wrote comparison.json, then arrays.npz, in place: a run killed between them left a 2-model table with
    3-model scores, which load_comparison returned without a word. Now both files are renamed into place, the JSON
    last, and it records each array's shape, dtype and CRC-32."""
    from jaxcompare.compare import _result

    three, two = _tiny_results()
    d = tmp_path / "saved"
    back = load_comparison(three.save(d))
    assert back.to_dict() == three.to_dict() and back.arrays["scores"].shape == (3, 32)
    manifest = json.loads((d / "comparison.json").read_text())["arrays"]
    assert manifest["scores"]["shape"] == [3, 32] and set(manifest) == set(three.arrays)

    real = _result._atomic

    def killed_before_json(path, write, mode):
        if path.endswith("comparison.json"):
            raise KeyboardInterrupt  # the process dies between the two files
        real(path, write, mode)

    monkeypatch.setattr(_result, "_atomic", killed_before_json)
    with pytest.raises(KeyboardInterrupt):
        two.save(d)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not from one save"):
        load_comparison(d)
    assert not [p.name for p in d.iterdir() if ".tmp" in p.name]  # no temporary file left behind

    # another result's arrays, a truncated archive, a version that is not the int 1, no path
    two.save(tmp_path / "two")
    three.save(d)
    (d / "arrays.npz").write_bytes((tmp_path / "two" / "arrays.npz").read_bytes())
    with pytest.raises(ValueError, match="not from one save"):
        load_comparison(d)
    three.save(d)
    good = (d / "arrays.npz").read_bytes()
    (d / "arrays.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="could not be read"):
        load_comparison(d)  # was a bare zipfile.BadZipFile
    three.save(d)
    data = json.loads((d / "comparison.json").read_text())
    for version in (True, 1.0):
        (d / "comparison.json").write_text(json.dumps(dict(data, format_version=version)))
        with pytest.raises(ValueError, match="format version 1"):
            load_comparison(d)
    for bad in (None, ""):
        with pytest.raises(TypeError, match="directory must be a directory path"):
            load_comparison(bad)
        with pytest.raises(TypeError, match="directory must be a directory path"):
            three.save(bad)

    # files from before the manifest: their shapes and values are still checked
    legacy = {k: v for k, v in data.items() if k != "arrays"}
    (d / "comparison.json").write_text(json.dumps(legacy))
    assert load_comparison(d).to_dict() == three.to_dict()
    (d / "arrays.npz").write_bytes((tmp_path / "two" / "arrays.npz").read_bytes())
    with pytest.raises(ValueError, match="has 3 models"):
        load_comparison(d)
    np.savez(
        d / "arrays.npz", **{k: np.where(True, np.nan, v) if k == "scores" else v for k, v in three.arrays.items()}
    )
    with pytest.raises(ValueError, match="NaN"):
        load_comparison(d)


def test_pytree_inputs_give_the_packed_array_results():
    """x_test as {"tokens", "mask"} (a transformer's inputs) was refused by compare_models. Oracle: the same model
    reading one packed array (tokens and mask side by side) must give the same table, kernels and attributions."""
    rng = np.random.default_rng(0)
    t, length, vocab = 40, 6, 11
    tokens = rng.integers(0, vocab, (t, length))
    mask = (rng.random((t, length)) > 0.3).astype(np.float32)
    y = rng.integers(0, 3, t)

    def tree_fn(p, x):
        h = p["emb"][x["tokens"]] * x["mask"][..., None]  # (n, L, d)
        return jnp.tanh(h.sum(1)) @ p["out"]

    def packed_fn(p, xp):
        return tree_fn(p, {"tokens": xp[:, :length].astype(jnp.int32), "mask": xp[:, length:]})

    params = [{"emb": rng.standard_normal((vocab, 5)), "out": rng.standard_normal((5, 3))} for _ in range(3)]
    tree = {"tokens": tokens, "mask": mask}
    packed = np.concatenate([tokens, mask], axis=1).astype(np.float64)
    kw = dict(n_boot=8, sections=("alpha", "similarity", "surrogate"), n_kernel_points=12, n_permutations=5,
              n_surrogate_train=10, attribution_k=2, progress_bar=False)  # fmt: skip
    train = {"tokens": tokens[:20], "mask": mask[:20]}
    a = compare_models(jax.random.key(3), tree_fn, params, tree, y, x_train=train, y_train=y[:20], **kw)
    b = compare_models(jax.random.key(3), packed_fn, params, packed, y, x_train=packed[:20], y_train=y[:20], **kw)
    for ra, rb in zip(a.rows, b.rows):
        for c in ("accuracy", "churn", "ece", "alpha_hat", "kernel_cka", "surrogate_accuracy"):
            assert ra[c] == pytest.approx(rb[c], rel=1e-9, abs=1e-12), c
    for name in b.arrays:
        np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-9, atol=1e-12)
    assert a.settings["x_test_shape"] == {"['mask']": [t, length], "['tokens']": [t, length]}
    with pytest.raises(
        ValueError, match=r"same per-example shapes: x_test\['mask'\] has \(6,\), x_train\['mask'\] has \(5,\)"
    ):
        bad_train = {"tokens": tokens[:20], "mask": mask[:20, :5]}
        compare_models(jax.random.key(3), tree_fn, params, tree, y, x_train=bad_train, y_train=y[:20], **kw)
    with pytest.raises(ValueError, match="same leading"):
        compare_models(jax.random.key(3), tree_fn, params, {"tokens": tokens, "mask": mask[:30]}, y, **kw)


def test_command_reads_pytree_inputs(tmp_path, monkeypatch):
    """--data with x_test/tokens, x_test/mask (and x_train/...) gives the model the dict {"tokens", "mask"}: the
    command's numbers equal compare_models called with that dict (the library path tested against a packed array
    above)."""
    rng = np.random.default_rng(1)
    (tmp_path / "tok_model.py").write_text(
        "import jax.numpy as jnp\n"
        "def apply(p, x):\n"
        "    h = p['emb'][x['tokens']] * x['mask'][..., None]\n"
        "    return jnp.tanh(h.sum(1)) @ p['out']\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    tokens, mask = rng.integers(0, 7, (24, 5)), (rng.random((24, 5)) > 0.2).astype(np.float32)
    y = rng.integers(0, 3, 24)
    np.savez(tmp_path / "d.npz", **{"x_test/tokens": tokens, "x_test/mask": mask, "y_test": y})
    params = [{"emb": rng.standard_normal((7, 4)), "out": rng.standard_normal((4, 3))} for _ in range(3)]
    for i, p in enumerate(params):
        save_params(p, tmp_path / "ck" / f"m{i}.npz")
    argv = ["compare", "--model", "tok_model:apply", "--checkpoints", str(tmp_path / "ck"), "--data",
            str(tmp_path / "d.npz"), "--sections", "alpha", "--n-boot", "6", "--out", str(tmp_path / "o")]  # fmt: skip
    try:
        assert run(_parse(argv)) == 0
        import tok_model

        models = load_checkpoints(str(tmp_path / "ck"))
        x = {"tokens": tokens, "mask": mask}
        want = compare_models(jax.random.key(0), tok_model.apply, models, x, y, n_boot=6, sections=("alpha",),
                              progress_bar=False)  # fmt: skip
    finally:
        sys.modules.pop("tok_model", None)
    got = load_comparison(tmp_path / "o")
    assert [r["alpha_hat"] for r in got.rows] == pytest.approx([r["alpha_hat"] for r in want.rows], abs=1e-12)
    assert got.settings["x_test_shape"] == {"['mask']": [24, 5], "['tokens']": [24, 5]}
    np.savez(tmp_path / "both.npz", **{"x_test": tokens, "x_test/mask": mask, "y_test": y})
    with pytest.raises(ValueError, match="both an array 'x_test' and arrays"):
        run(_parse([a if a != str(tmp_path / "d.npz") else str(tmp_path / "both.npz") for a in argv]))
