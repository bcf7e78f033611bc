"""The study's report and runner: results written whole and strictly (nothing lost or half-written), numbers printed
without a rounding that reads as exact, bad input refused before any section runs. Expected values are written out
by hand here (the JSON text, the HTML cells)."""

import collections
import datetime
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompare._format import format_value
from jaxcompare.study import Report, Section, to_jsonable


def _strict(text):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_to_jsonable_keeps_what_it_is_given():
    """Complex parts were dropped ([1+2j] -> [1.0]), named tuples lost their field names, bfloat16 NaN/inf stayed NaN
    (then json.dump failed half-way through results.json), sets and dates raised a bare TypeError."""
    P = collections.namedtuple("P", "alpha p_value")
    got = to_jsonable(
        {
            "c": np.array([1 + 2j, -0.5j]),
            "z": 3 - 1j,
            "nt": P(np.float32(0.25), np.nan),
            "bf": jnp.array([1.5, jnp.nan, -jnp.inf], jnp.bfloat16),
            "f16": np.float16(np.inf),
            "s": {3, 1, 2},
            "d": np.datetime64("2026-12-01"),
            "t": datetime.date(2026, 12, 1),
            "i": np.int64(2**40),
            "b": np.bool_(True),
            "o": np.array(["x", 1.5, np.nan], dtype=object),
            "j": jnp.float32(2.5),
        }
    )
    assert got == {
        "c": {"real": [1.0, 0.0], "imag": [2.0, -0.5]},
        "z": {"real": 3.0, "imag": -1.0},
        "nt": {"alpha": 0.25, "p_value": None},
        "bf": [1.5, None, None],
        "f16": None,
        "s": [1, 2, 3],
        "d": "2026-12-01",
        "t": "2026-12-01",
        "i": 2**40,
        "b": True,
        "o": ["x", 1.5, None],
        "j": 2.5,
    }
    _strict(json.dumps(got, allow_nan=False))
    with pytest.raises(TypeError, match=r"at \['runs'\]\[1\]\['model'\]: object has no JSON form"):
        to_jsonable({"runs": [{}, {"model": object()}]})


def test_report_write_forms_both_files_before_writing(tmp_path):
    r = Report("title")
    r.text("first")
    r.results["x"] = np.array([1.0, np.nan], jnp.bfloat16)
    path = r.write(str(tmp_path))
    assert _strict((tmp_path / "results.json").read_text()) == {"x": [1.0, None]}
    before = (tmp_path / "index.html").read_text(), (tmp_path / "results.json").read_text()
    r.text("second")
    r.results["bad"] = object()
    with pytest.raises(TypeError, match=r"at \['bad'\]"):
        r.write(str(tmp_path))
    # the earlier files stand whole (index.html was written, then results.json failed half-way)
    assert ((tmp_path / "index.html").read_text(), (tmp_path / "results.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "results.json"]
    assert path == str(tmp_path / "index.html")


def test_report_methods_refuse_what_would_print_badly():
    r = Report("t")
    for call, match in (
        (lambda: Report(None), "title must be a str"),
        (lambda: r.section(None), "section title must be a str"),
        (lambda: r.section("ok", 3), "guide must be a str"),
        (lambda: r.text(None), "text must be a str"),  # printed "None" on the page
        (lambda: r.finding(None), "finding must be a str"),
        (lambda: r.kpis({1: 2}), "label must be a str"),
        (lambda: r.kpis([("a", 1)]), "mapping"),
        (lambda: r.table("rows"), "list of mappings"),
        (lambda: r.table([{"a": 1}], caption=5), "caption must be a str"),
        (lambda: r.figure(None, "c"), "matplotlib Figure"),
        (lambda: r.write(".", footer=None), "footer must be a str"),
    ):
        with pytest.raises(TypeError, match=match):
            call()
    with pytest.raises(ValueError, match="max_rows must be >= 1"):  # -1 with 2 rows said "3 more rows"
        r.table([{"a": 1}, {"a": 2}], max_rows=-1)


def test_report_table_columns_and_numbers():
    r = Report("t")
    r.table(
        [{"a": 1}, {"a": 2, "b": jnp.float32(0.12345678)}, {"a": 0.99996, "b": np.nan, "c": True}],
        max_rows=2,
    )
    page = r.parts[-1]
    # a column first seen in a later row is kept (it was dropped); JAX scalars at four digits (printed in full)
    assert "<th>a</th><th>b</th><th>c</th>" in page
    assert "<td>0.1235</td>" in page and "1 more rows in results.json" in page
    r.table([{"auroc": 0.99996, "acc": 1.0, "nan": jnp.array(jnp.nan)}])
    assert "<td>0.99996</td><td>1</td><td>—</td>" in r.parts[-1]  # 0.99996 read "1", an AUROC that looks perfect


@pytest.mark.parametrize(
    "v, text",
    [
        (0.712345, "0.7123"),
        (0.99996, "0.99996"),
        (-0.99996, "-0.99996"),
        (2.00004, "2.00004"),
        (0.9999999999, "≈1"),
        (1.0, "1"),
        (12345678, "12345678"),
        (1234567.8, "1.235e+06"),
        (2e-5, "2.00e-05"),
        (0.0, "0"),
        (float("inf"), "—"),
        (None, "—"),
        (np.float32(3.0), "3"),
        (jnp.bfloat16(1.5), "1.5"),
        (jnp.array(7), "7"),
        (np.bool_(False), "no"),
        ("<b>&", "&lt;b&gt;&amp;"),
    ],
)
def test_format_value(v, text):
    assert format_value(v) == text


def test_run_study_checks_its_arguments_before_any_section(tmp_path, monkeypatch):
    from jaxcompare.study import _run

    ran = []
    monkeypatch.setattr(_run, "_run_section", lambda *a: ran.append(a[0]) or ({}, Report(""), 0.0))
    (tmp_path / "a_file").write_text("")
    for kwargs, exc, match in (
        (dict(out_dir=None), TypeError, "out_dir must be a directory path"),
        (dict(out_dir=str(tmp_path / "a_file")), ValueError, "out_dir must be a directory"),
        (dict(out_dir=str(tmp_path / "a_file" / "sub")), ValueError, "out_dir"),
        (dict(out_dir=str(tmp_path), quick="no"), TypeError, "quick"),  # "no" ran a quick study
        (dict(out_dir=str(tmp_path), quick=None), TypeError, "quick"),
        (dict(out_dir=str(tmp_path), sections=["lwr", 3]), TypeError, "section names"),
        (dict(out_dir=str(tmp_path), sections="nope"), ValueError, "sections must be some of"),
    ):
        with pytest.raises(exc, match=match):
            _run.run_study(workers=1, **kwargs)
    assert ran == []
    _run.run_study(tmp_path / "out", sections="lwr", workers=1)  # one name, and a Path
    assert ran == ["lwr"] and (tmp_path / "out" / "index.html").exists()


def test_section_checks_its_fields():
    def run(key, report, size, out_dir):
        return {}

    for kwargs, exc, match in (
        (dict(name=3, run=run, quick={}, full={}), ValueError, "identifier"),
        (dict(name="s", run=None, quick={}, full={}), TypeError, "callable"),
        (dict(name="s", run=run, quick={"n": 1}, full={"m": 1}), ValueError, "same sizes"),
        (dict(name="s", run=run, quick=[1], full={}), TypeError, "mapping"),
        (dict(name="s", run=run, quick={}, full={}, cost=float("nan")), ValueError, "cost"),
        (dict(name="s", run=run, quick={}, full={}, cost=-1.0), ValueError, "cost"),
    ):
        with pytest.raises(exc, match=match):
            Section(**kwargs)
