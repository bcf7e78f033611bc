"""The main job's parts: the helpers moved out of the CLI (auroc, logit scores, spectral diagnosis, digits data,
parameter files) against independent oracles, the section registry, and the report (escaped text, images that
decode, no overflow at 800 px in a real headless browser when one is installed)."""

from __future__ import annotations

import base64
import html.parser

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import sklearn.datasets
import sklearn.metrics
from _browser import CHROMIUM, NO_CHROMIUM, audit_layout

from jaxcompare.cli import load_params, save_params
from jaxcompare.lwr._diagnosis import spectral_diagnosis
from jaxcompare.metrics._auroc import auroc
from jaxcompare.metrics._scores import SCORE_REDUCTIONS, logit_scores


# ----------------------------------------------------------------------------------------------------------------
# auroc
# ----------------------------------------------------------------------------------------------------------------
def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n, n_levels in [(50, 1000), (200, 5), (31, 2)]:  # few levels = many ties
        s = rng.integers(0, n_levels, n).astype(np.float64)
        pos = rng.random(n) < 0.4
        pos[:2] = [True, False]
        want = sklearn.metrics.roc_auc_score(pos, s)
        assert float(auroc(s, pos)) == pytest.approx(want, abs=1e-12)
        # naive pairwise definition (Mann-Whitney with ties 1/2)
        d = s[pos][:, None] - s[~pos][None, :]
        assert float(auroc(s, pos.astype(np.int32))) == pytest.approx(np.mean((d > 0) + 0.5 * (d == 0)), abs=1e-12)


def test_auroc_jit_vmap_dtype():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 40))
    pos = np.tile(np.arange(40) % 3 == 0, (4, 1))
    loop = np.array([float(auroc(a, b)) for a, b in zip(s, pos)])
    np.testing.assert_allclose(jax.vmap(auroc)(s, pos), loop, atol=1e-12)
    np.testing.assert_allclose(jax.jit(auroc)(s[0], pos[0]), loop[0], atol=1e-12)
    assert auroc(s[0].astype(np.float32), pos[0]).dtype == jnp.float32
    assert auroc(s[0], pos[0]).dtype == jnp.float64


@pytest.mark.parametrize(
    "scores,positive,match",
    [
        (np.arange(4.0), np.ones(4, bool), "one positive and one negative"),
        (np.arange(4.0), np.zeros(4, bool), "one positive and one negative"),
        (np.arange(4.0), np.array([True, False, True]), "lengths must match"),
        (np.array([0.0, np.nan, 1.0]), np.array([True, False, True]), "finite"),
        (np.arange(4.0), np.array([0, 2, 1, 0]), "0/1"),
        (np.ones((2, 2)), np.ones((2, 2), bool), "1 dimensions"),
    ],
)
def test_auroc_bad_input(scores, positive, match):
    with pytest.raises((ValueError, TypeError), match=match):
        auroc(scores, positive)


# ----------------------------------------------------------------------------------------------------------------
# logit scores
# ----------------------------------------------------------------------------------------------------------------
def _naive_scores(logits, y, kind):
    out = np.empty(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        l, t = logits[idx], y[idx[-1]]
        if kind == "margin":
            out[idx] = l[t] - max(l[c] for c in range(len(l)) if c != t)
        elif kind == "true_logprob":
            out[idx] = l[t] - scipy.special.logsumexp(l)
        else:
            srt = sorted(l)
            out[idx] = l[1] - l[0] if len(l) == 2 else srt[-1] - srt[-2]
    return out


@pytest.mark.parametrize("kind", SCORE_REDUCTIONS)
@pytest.mark.parametrize("n_classes", [2, 5])
def test_logit_scores_against_naive(kind, n_classes):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 7, n_classes)) * 3
    y = rng.integers(0, n_classes, 7)
    got = logit_scores(logits, y, score=kind)
    assert got.shape == (3, 7) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, _naive_scores(logits, y, kind), atol=1e-12)
    np.testing.assert_allclose(logit_scores(logits + 10.0, y, score=kind), got, atol=1e-10)  # shift invariance
    np.testing.assert_allclose(jax.jit(lambda a, b: logit_scores(a, b, score=kind))(logits, y), got, atol=1e-12)
    assert logit_scores(logits.astype(np.float32), y, score=kind).dtype == jnp.float32


def test_logit_scores_bad_input():
    l3 = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="needs the true labels"):
        logit_scores(l3)
    with pytest.raises(ValueError, match="C >= 2"):
        logit_scores(np.zeros((4, 1)), score="logit_gap")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        logit_scores(l3, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="length 4"):
        logit_scores(l3, np.array([0, 1]))
    with pytest.raises(ValueError, match="score must be one of"):
        logit_scores(l3, np.array([0, 1, 2, 0]), score="gap")
    with pytest.raises(ValueError, match="finite"):
        logit_scores(np.full((4, 3), np.nan), score="logit_gap")


# ----------------------------------------------------------------------------------------------------------------
# spectral diagnosis (the rule, on spectra built to sit on each side of its thresholds)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mp_spectrum():
    w = np.random.default_rng(3).normal(size=(600, 200))
    return np.sort(np.linalg.eigvalsh(w.T @ w / 600))[::-1]


def test_spectral_diagnosis_rule(mp_spectrum):
    e0 = mp_spectrum
    d = e0.size
    same = spectral_diagnosis(e0, e0, 0.05)
    assert same.verdict.startswith("bulk unchanged") and same.n_outliers == 0
    assert same.init_max == pytest.approx(e0.max()) and same.tail_alpha_init == pytest.approx(same.tail_alpha_end)
    spike = np.r_[10.0, e0[1:]]
    assert spectral_diagnosis(e0, spike, 3 / np.sqrt(d)).verdict.startswith("aligned spike")
    assert spectral_diagnosis(e0, spike, 1 / np.sqrt(d)).verdict == "outliers without alignment"
    assert spectral_diagnosis(e0, spike, 3 / np.sqrt(d)).n_outliers == 1
    # heavy tails: 30% of the spectrum pushed far above the edge along a Pareto tail (density ∝ x^-2.5)
    k = int(0.3 * d)
    tail = e0.max() * 2 * (1 - np.random.default_rng(4).random(k)) ** (-1 / 1.5)
    heavy = np.r_[tail, e0[k:]]
    diag = spectral_diagnosis(e0, heavy, 0.01)
    assert diag.n_outliers >= k and diag.tail_alpha_init - diag.tail_alpha_end > 1.5
    assert diag.verdict.startswith("heavy tails")


def test_spectral_diagnosis_bad_input(mp_spectrum):
    with pytest.raises(ValueError, match="same shape"):
        spectral_diagnosis(mp_spectrum, mp_spectrum[:-1], 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        spectral_diagnosis(mp_spectrum, -mp_spectrum, 0.1)
    with pytest.raises(ValueError, match="top_align"):
        spectral_diagnosis(mp_spectrum, mp_spectrum, 1.5)


# ----------------------------------------------------------------------------------------------------------------
# digits data and parameter files
# ----------------------------------------------------------------------------------------------------------------
def test_digits_task_against_sklearn():
    from jaxcompare.data import digits_task

    d = sklearn.datasets.load_digits()
    x_tr, y_tr, x_te, y_te, names = digits_task("binary", seed=3, test_fraction=0.25)
    assert names == ["even", "odd"] and x_te.shape == (449, 64) and x_tr.shape == (1348, 64)
    perm = np.random.default_rng(3).permutation(1797)
    np.testing.assert_array_equal(x_te, (d.data[perm[:449]] / 16).astype(np.float32))
    np.testing.assert_array_equal(y_tr, d.target[perm[449:]] % 2)
    assert digits_task("multiclass").class_names == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="kind"):
        digits_task("ternary")
    with pytest.raises(ValueError, match="test_fraction"):
        digits_task("binary", test_fraction=1.0)


def test_train_ensemble_validates():
    from jaxcompare.data import Recipe, make_mlp, train_ensemble

    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="share batch_size"):
        train_ensemble(
            jax.random.key(0),
            make_mlp(2),
            x,
            np.zeros(10, int),
            2,
            [Recipe("a", batch_size=2), Recipe("b", batch_size=4)],
        )
    with pytest.raises(ValueError, match="exceeds the 10 training points"):
        train_ensemble(jax.random.key(0), make_mlp(2), x, np.zeros(10, int), 2, [Recipe("a")])
    with pytest.raises(ValueError, match="y must lie"):
        train_ensemble(jax.random.key(0), make_mlp(2), x, np.full(10, 2), 2, [Recipe("a", batch_size=2)])
    with pytest.raises(ValueError, match="Recipe.label_noise"):
        Recipe("a", label_noise=1.5)


def test_save_params_round_trip(tmp_path):
    import flax.linen as nn

    model = nn.Dense(3)
    variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    path = save_params(variables["params"], str(tmp_path / "p"))
    assert path.endswith("p.npz")
    with np.load(path) as z:
        assert sorted(z.keys()) == ["bias", "kernel"]
        np.testing.assert_array_equal(z["kernel"], np.asarray(variables["params"]["kernel"]))
    nested = {"enc": {"Dense_0": {"kernel": np.arange(6.0).reshape(2, 3)}}, "head": {"b": np.ones(2, np.float32)}}
    back = load_params(save_params(nested, str(tmp_path / "n.npz")))
    np.testing.assert_array_equal(back["enc"]["Dense_0"]["kernel"], nested["enc"]["Dense_0"]["kernel"])
    assert back["head"]["b"].dtype == np.float32
    seq = load_params(save_params({"layers": [np.ones(2)]}, str(tmp_path / "s.npz")))  # sequences: keys "0", "1"
    np.testing.assert_array_equal(seq["layers"]["0"], np.ones(2))
    with pytest.raises(ValueError, match="contains the separator"):
        save_params({"a/b": np.ones(2)}, str(tmp_path / "x.npz"))
    with pytest.raises(TypeError, match="bfloat16"):
        save_params({"w": jnp.ones(2, jnp.bfloat16)}, str(tmp_path / "x.npz"))


# ----------------------------------------------------------------------------------------------------------------
# registry and run_study (fake sections: the mechanics without the science)
# ----------------------------------------------------------------------------------------------------------------
def test_registry_sections():
    from jaxcompare.study import SECTIONS, Section

    assert list(SECTIONS) == ["ensembles", "surrogates", "lwr", "microscope", "architectures", "recipes"]
    for name, sec in SECTIONS.items():
        assert isinstance(sec, Section) and sec.name == name and set(sec.quick) == set(sec.full)
    with pytest.raises(TypeError):
        SECTIONS["new"] = None  # read-only: a section is added in _registry.py, not at run time
    keys = [k for s in SECTIONS.values() for k in s.quick]
    assert len(keys) == len(set(keys)), "section size names must not collide (config.sizes merges them)"


def _fake_sections(seen):
    from jaxcompare.study import Section

    def make(name):
        def run(key, report, size, out_dir):
            seen.append((name, jax.random.key_data(key).tolist(), dict(size)))
            report.section(f"{name} <title>", "guide with |<u1, β>| and `code`")
            report.table([{"a <b>": "x & y", "value": 0.5}])
            report.finding(f"{name} found <nothing>")
            return {"value": 1.0}

        return Section(name, run, quick={f"{name}_n": 1}, full={f"{name}_n": 2})

    return {n: make(n) for n in ("one", "two", "three")}


def test_run_study_order_keys_and_escaping(tmp_path, monkeypatch):
    import json

    from jaxcompare.study import _run

    seen = []
    monkeypatch.setattr(_run, "SECTIONS", _fake_sections(seen))
    # workers=1: the fake sections live in this process (worker processes import the real registry)
    path = _run.run_study(str(tmp_path), quick=True, seed=5, sections=["three", "one"], workers=1)
    assert [s[0] for s in seen] == ["one", "three"]  # registry order, not request order
    # the section at registry position i gets fold_in(key(seed), i): a subset reproduces the full run's numbers
    assert seen[1][1] == jax.random.key_data(jax.random.fold_in(jax.random.key(5), 2)).tolist()
    assert seen[0][2] == {"one_n": 1}
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["sizes"] == {"one_n": 1, "two_n": 1, "three_n": 1} and "two" not in res
    page = open(path, encoding="utf-8").read()
    assert "|&lt;u1, β&gt;|" in page and "<code>code</code>" in page and "&lt;title&gt;" in page
    assert "found &lt;nothing&gt;" in page and "x &amp; y" in page and "a &lt;b&gt;" in page
    with pytest.raises(ValueError, match="sections must be some of"):
        _run.run_study(str(tmp_path), sections=["nope"])
    with pytest.raises(ValueError, match="seed"):
        _run.run_study(str(tmp_path), seed=2**70)
    with pytest.raises(ValueError, match="workers"):
        _run.run_study(str(tmp_path), workers=0)


# ----------------------------------------------------------------------------------------------------------------
# report HTML: escaped text, decodable images, layout in a real browser
# ----------------------------------------------------------------------------------------------------------------
class _Audit(html.parser.HTMLParser):
    """Collects text nodes, image sources and the element stack of every table."""

    def __init__(self):
        super().__init__()
        self.text, self.images, self.stack, self.tables_unwrapped = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "table" and not any(t == "div" and "table-wrap" in (c or "") for t, c in self.stack):
            self.tables_unwrapped += 1
        if tag not in ("img", "meta", "br"):
            self.stack.append((tag, a.get("class")))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)


def audit_report(page: str) -> _Audit:
    """Assert the page has no markup-looking text left unescaped, only wrapped tables and PNG images that decode."""
    a = _Audit()
    a.feed(page)
    text = "".join(t for t in a.text)
    # escaped text parses back to text containing '<'; markup swallowed by the parser (the '||' defect) would not
    assert "||" not in text, "a table cell or guide lost its text (unescaped '<...>')"
    assert a.tables_unwrapped == 0, "every table must sit in a scrolling .table-wrap"
    assert a.images, "the report has no figures"
    for src in a.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n", "broken image"
    return a


def _tiny_report(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcompare.study import Report

    r = Report("layout check")
    r.section("Spectra", "compare |<u1, β>| > 2/√d")
    r.table(
        [
            {
                "optimizer": "SGD large step (η = 150, batch 32, 50 steps)",
                "|<u1, β>|": 0.5,
                **{f"column {i}": 1.0 + i for i in range(12)},
                "diagnosis": "aligned spike: large-step (S)GD",
            }
        ]
    )
    fig, ax = plt.subplots(figsize=(14, 3))
    ax.plot([0, 1], [0, 1])
    r.figure(fig, "a wide figure")
    r.write(str(tmp_path))
    return tmp_path / "index.html"


def test_report_html_escaped_and_images_decode(tmp_path):
    page = _tiny_report(tmp_path).read_text(encoding="utf-8")
    a = audit_report(page)
    assert "|<u1, β>|" in "".join(a.text)  # shown to the reader as written


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("width", [1400, 800])
def test_report_layout_in_headless_browser(tmp_path, width):
    a = audit_layout(_tiny_report(tmp_path), width, expect_text=["|<u1, β>|"], wrappers=".table-wrap")
    assert (a["page"], a["broken"], a["overflow"], a["found"]) == (False, 0, 0, [True]), a


@pytest.mark.slow
def test_lwr_section_report_is_clean(tmp_path):
    """The real lwr section (quick sizes): its guide and table headers hold |<u1, β>|, which must reach the reader."""
    from jaxcompare.study import run_study

    path = run_study(str(tmp_path), quick=True, sections=["lwr"])
    page = open(path, encoding="utf-8").read()
    a = audit_report(page)
    text = "".join(a.text)
    assert text.count("|<u1, β>|") >= 2  # guide and table header
    assert "red curves" in text and "orange" not in text  # the limit curves are drawn in red (C3)
    assert (tmp_path / "figures" / "lwr_spectra.png").stat().st_size > 10_000
    # --quick runs 20 steps: the large-step row said "50 steps" whatever ran
    import json

    runs = [r["optimizer"] for r in json.loads((tmp_path / "results.json").read_text())["lwr"]["runs"]]
    assert (
        "SGD large step (η = 150, batch 32, 20 steps)" in runs
        and "SGD large step (η = 150, batch 32, 20 steps)" in text
    )
