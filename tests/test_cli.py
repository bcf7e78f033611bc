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
    p = subprocess.run(
        [sys.executable, "-m", "jaxcompare", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )
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
    for cmd in ([], ["demo"], ["alpha"], ["lwr"], ["ntk"], ["spectra"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: jaxcompare" in out
        if cmd:
            assert "(default: " in out and "--debug" in out, out
    main_help = {}
    for cmd in ("alpha", "lwr", "ntk"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        main_help[cmd] = " ".join(capsys.readouterr().out.split())
    assert "{margin,logit_gap,true_logprob}" in main_help["alpha"]
    assert "{gd,sgd,adam}" in main_help["lwr"] and "adam 0.01" in main_help["lwr"]
    import jaxcompare.ntk as ntk

    assert "{" + ",".join(ntk.KERNELS) + "}" in main_help["ntk"]


def test_alpha_exact_and_bootstrap(score_files, tmp_path):
    """The exact protocol in a real process, against the library. The bootstrap protocol on (M, T) scores is
    checked in process by test_alpha_logits_with_labels_prints_metrics (its margin scores) and in a real process,
    without float64, by the demo's ensembles section (test_demo_quick_end_to_end)."""
    out = tmp_path / "a.json"
    rc, so, se = run_cli(
        "alpha",
        "--candidates",
        str(score_files / "cand.npz"),
        "--reference",
        str(score_files / "ref.csv"),
        "--bootstrap",
        "0",
        "--out",
        str(out),
    )
    assert rc == 0, se
    res = json.loads(out.read_text())
    a = np.array(res["alpha_hat"])
    assert a.shape == (3,)
    # the shifted candidate (mean +2 sd) must be far less typical than the two null candidates
    assert a[2] > 0.5 and a[:2].max() < 0.3
    # oracle: the same quantity through the library

    import jaxcompare as jc

    cand = np.load(score_files / "cand.npz")["scores"]
    ref = np.load(score_files / "ref.npy")
    thr = jc.ks_threshold(200, 200, 0.01)
    np.testing.assert_allclose(a, [float(jc.alpha_hat(c, ref.reshape(-1), threshold=thr)) for c in cand], atol=1e-9)
    # the bootstrap protocol on (M, T) scores: test_alpha_logits_with_labels_prints_metrics (its margin scores)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "not found"),
        ("nan", "NaN"),
        ("short", "same test points"),
        ("obj", "pickles"),
        ("garbage", "could not be read"),
        ("ext", ".npy, .npz or .csv"),
    ],
)
def test_alpha_bad_files(capfd, score_files, tmp_path, case, needle):
    """In process, stderr read at the file-descriptor level (what the process would print; capfd). A real process
    prints its one line in test_alpha_bad_level."""
    cand = {
        "missing": str(tmp_path / "nope.npy"),
        "nan": str(score_files / "nan.npy"),
        "short": str(score_files / "short.npy"),
        "obj": str(score_files / "obj.npy"),
        "garbage": str(score_files / "garbage.csv"),
        "ext": str(tmp_path / "x.json"),
    }[case]
    if case == "ext":
        (tmp_path / "x.json").write_text("{}")
    rc, so, se = run_main(capfd, "alpha", "--candidates", cand, "--reference", str(score_files / "ref.npy"))
    assert_one_line_error(rc, se, needle)


def test_alpha_bad_level(score_files):
    """A real process: its whole stderr is the one error line."""
    rc, so, se = run_cli(
        "alpha",
        "--candidates",
        str(score_files / "cand.npz"),
        "--reference",
        str(score_files / "ref.npy"),
        "--level",
        "1.5",
    )
    assert_one_line_error(rc, se, "(0, 1)")


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
    rc, so, se = run_cli(
        "ntk",
        "--model",
        "mymodel:apply_fn",
        "--params",
        "params.npz",
        "--data",
        "x.npy",
        "--kernel",
        "trntk0",
        "--block-size",
        "3",
        "--out",
        "k.npy",
        cwd=ntk_files,
    )
    assert rc == 0, se
    assert "deprecated" not in se
    k = np.load(ntk_files / "k.npy")
    # oracle, derived by hand for f = tanh(x W1) W2 (no biases), trNTK⁰ = sum over classes:
    #   W2 block: d f_c / d W2[a, c'] = h_a [c == c']          -> C * (h h^T)
    #   W1 block: d f_c / d W1[k, a] = x_k (1 - h_a^2) W2[a, c] -> (x x^T) * sum_a dh_ia dh_ja sum_c W2[a, c]^2
    p = np.load(ntk_files / "params.npz")
    w1, w2, x = p["l1/w"], p["l2/w"], np.load(ntk_files / "x.npy")
    h = np.tanh(x @ w1)
    dh = 1 - h**2
    oracle = w2.shape[1] * (h @ h.T) + (x @ x.T) * np.einsum("ia,ja,ac,ac->ij", dh, dh, w2, w2)
    np.testing.assert_allclose(k, oracle, rtol=1e-6)


def test_ntk_command_store_resumes_and_splits_over_processes(capsys, ntk_files, monkeypatch, tmp_path):
    """--store DIR: the kernel tile by tile into DIR (kernel_to_disk), shared by two processes
    (--process-index/--process-count); the first says what remains and writes no --out, the second completes
    it; a rerun reads the store. Oracle: the trNTK⁰ of tanh(x W1) W2 derived by hand (as above)."""
    monkeypatch.chdir(ntk_files)
    monkeypatch.syspath_prepend(str(ntk_files))
    p = np.load(ntk_files / "params.npz")
    w1, w2, x = p["l1/w"], p["l2/w"], np.load(ntk_files / "x.npy")
    h = np.tanh(x @ w1)
    dh = 1 - h**2
    oracle = w2.shape[1] * (h @ h.T) + (x @ x.T) * np.einsum("ia,ja,ac,ac->ij", dh, dh, w2, w2)
    st, out = tmp_path / "st", tmp_path / "k.npy"
    base = ("ntk", "--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy", "--kernel", "trntk0")
    base += ("--block-size", "3", "--store", str(st))  # 7 points: 3 blocks, 6 tiles on and above the diagonal
    rc, so, se = run_main(capsys, *base, "--out", str(out), "--process-index", "0", "--process-count", "2")
    assert rc == 0 and "process 0 of 2" in so and "3 of 6 tiles" in so and not out.exists(), (so, se)
    rc, so, se = run_main(capsys, *base, "--out", str(out), "--process-index", "1", "--process-count", "2")
    assert rc == 0 and f"wrote {out}" in so, se
    np.testing.assert_allclose(np.load(out), oracle, rtol=1e-6)
    np.testing.assert_array_equal(np.load(st / "kernel.npy"), np.load(out))
    out.unlink()
    rc, so, se = run_main(capsys, *base)  # no --out: the store holds the kernel
    assert rc == 0 and f"wrote {st / 'kernel.npy'}" in so and not out.exists()
    np.save(tmp_path / "x2.npy", x + 1.0)
    other = [a if a != "x.npy" else str(tmp_path / "x2.npy") for a in base]
    rc, so, se = run_main(capsys, *other)
    assert rc == 2 and "--store: " in se and "holds a kernel run with different inputs" in se
    assert "pass --overwrite" in se and "overwrite=True" not in se  # the command's flag, not the library's argument
    rc, so, se = run_main(capsys, *other, "--overwrite")
    assert rc == 0
    for args, needle in (
        (base[:-2] + ("--process-index", "0", "--process-count", "2", "--out", "o.npy"), "give --store DIR"),
        (base[:-2], "--out is required"),
        (base[:-2] + ("--out", "o.npy", "--overwrite"), "--overwrite applies to a --store"),
        (base + ("--process-index", "0"), "go together"),
        (base + ("--process-index", "2", "--process-count", "2"), "below --process-count"),
    ):
        rc, so, se = run_main(capsys, *args)
        assert rc == 2 and needle in se, (args, se)


def test_ntk_command_projection_and_output_probes(ntk_files):
    """``--kernel proj_trntk --output-probes 2``: the structured sketch with two output probes, in tiles of 3, is the
    library's kernel for the same key (the CLI runs without jax_enable_x64, this test with it: the probes are the
    same); it is close to the exact trNTK (cosine, dim 4096)."""
    import jax

    import jaxcompare as jc
    from jaxcompare.cli._ntk import import_model, load_params

    base = ["--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy", "--block-size", "3"]
    rc, so, se = run_cli(
        "ntk",
        *base,
        "--kernel",
        "proj_trntk",
        "--dim",
        "4096",
        "--output-probes",
        "2",
        "--out",
        "k.npy",
        cwd=ntk_files,
    )
    assert rc == 0, se
    k = np.load(ntk_files / "k.npy")
    import sys

    sys.path.insert(0, str(ntk_files))
    try:
        fn = import_model("mymodel:apply_fn")
    finally:
        sys.path.remove(str(ntk_files))
    params = load_params(str(ntk_files / "params.npz"))
    x = np.load(ntk_files / "x.npy")
    proj = jc.structured_projection(jax.random.key(0), 4096, output_probes=2)
    np.testing.assert_allclose(k, np.asarray(jc.trace_ntk(fn, projection=proj)(params, x)), rtol=1e-5, atol=1e-6)
    exact = np.asarray(jc.trace_ntk(fn)(params, x))
    assert np.abs(k - exact).max() < 0.25 and not np.allclose(k, exact, atol=1e-6)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--kernel", "proj_trntk", "--output-probes", "3"], "must be even"),
        (["--kernel", "proj_trntk", "--output-probes", "4"], "not fewer than the model's 3 outputs"),
        (["--kernel", "proj_pntk", "--output-probes", "2"], "pNTK"),
        (["--kernel", "trntk", "--output-probes", "2"], "proj_* kernels"),
        (["--kernel", "proj_trntk", "--dim", "33"], "even"),
    ],
)
def test_ntk_command_projection_failures(capfd, ntk_files, monkeypatch, args, needle):
    """In process, stderr read at the file-descriptor level (capfd); test_model_module_that_exits_at_import is the
    ntk failure in a real process."""
    monkeypatch.chdir(ntk_files)
    monkeypatch.syspath_prepend(str(ntk_files))
    base = ["--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy", "--out", "o.npy"]
    rc, so, se = run_main(capfd, "ntk", *base, *args)
    assert_one_line_error(rc, se, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "nosuchmod:f"], "could not import"),
        (["--model", "mymodel:nothing"], "no function"),
        (["--model", "mymodel"], "module:function"),
        (["--model", "mymodel:bad_fn"], "(N, C)"),
        (["--model", "mymodel:apply_fn", "--data", "x_bad.npy"], "failed"),
        (["--model", "mymodel:apply_fn", "--params", "x.npy"], ".npz"),
    ],
)
def test_ntk_command_failures(capfd, ntk_files, monkeypatch, args, needle):
    """In process, stderr read at the file-descriptor level (capfd); test_model_module_that_exits_at_import is the
    ntk failure in a real process."""
    monkeypatch.chdir(ntk_files)
    monkeypatch.syspath_prepend(str(ntk_files))
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
    rc, so, se = run_main(capfd, "ntk", *flat)
    assert_one_line_error(rc, se, needle)


def test_lwr_command(capfd, tmp_path):
    """The success path in a real process; the argument errors in process (stderr read at the file-descriptor
    level, capfd)."""
    rc, so, se = run_cli("lwr", "--n", "60", "--d", "30", "--h", "45", "--steps", "6", "--out", str(tmp_path / "o"))
    assert rc == 0, se
    assert (tmp_path / "o" / "spectra.png").stat().st_size > 1000
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["n"] == 60
    rc, so, se = run_main(capfd, "lwr", "--n", "0")
    assert rc == 2 and "positive integer" in se
    rc, so, se = run_main(
        capfd, "lwr", "--n", "60", "--d", "30", "--h", "45", "--optimizer", "sgd", "--out", str(tmp_path / "sgd")
    )
    assert_one_line_error(rc, se, "--batch-size")
    assert not (tmp_path / "sgd").exists()  # argument errors are found before the output directory is made


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "rep"
    # the architectures and recipes sections have their own tests (test_study_sections, test_recipes), and the lwr
    # section at --quick sizes with this seed is run by test_study.py::test_lwr_section_report_is_clean (the same
    # numbers, with its report checked there): leaving them out here saves ≈ 60 s of CPU of the suite's budget;
    # every section through the CLI is what `make demo` runs.
    rc, so, se = run_cli("demo", "--quick", "--out", str(out), "--sections", "ensembles,surrogates,microscope")
    assert rc == 0, se[-3000:]
    html = (out / "index.html").read_text()
    res = json.loads((out / "results.json").read_text())
    for sec in ("ensembles", "surrogates", "microscope"):
        assert sec in res, sec
    assert "lwr" not in res
    assert html.count("<img") >= 3
    assert "What this report found" in html
    ens = res["ensembles"]["multiclass"]
    assert len(ens["candidates"]) > 0 and 0 <= ens["candidates"][0]["alpha_hat"] <= 1
    # an unknown section: test_unwritable_out_fails_before_any_work (in process, the console script's code path)


# ----------------------------------------------------------------------------------------------------------------
# failure paths (issue 15): one stderr line, exit status 2, output paths checked before any work
# ----------------------------------------------------------------------------------------------------------------
def run_main(capsys, *args):
    """In-process (fast); the same code path as the console script."""
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _huge_header_npy(path, shape=(10**12,)):
    """A valid .npy header that declares ``shape`` float64 entries, followed by 16 bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 16)


@pytest.fixture()
def bad_files(score_files, tmp_path):
    full = tmp_path / "full.npz"
    np.savez(full, scores=np.ones((3, 200)))
    raw = full.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "trunc.npy").write_bytes((score_files / "ref.npy").read_bytes()[:300])
    _huge_header_npy(tmp_path / "huge.npy")
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize(
    "case,needles",
    [
        ("trunc_npz", ["truncated or corrupt"]),
        ("trunc_npy", ["truncated or corrupt"]),
        ("huge", ["1000000000000", "truncated or corrupt"]),
    ],
)
def test_alpha_corrupt_files(capsys, score_files, bad_files, case, needles):
    path = {"trunc_npz": bad_files / "trunc.npz", "trunc_npy": bad_files / "trunc.npy", "huge": bad_files / "huge.npy"}[
        case
    ]
    rc, out, err = run_main(capsys, "alpha", "--candidates", str(path), "--reference", str(score_files / "ref.npy"))
    assert_one_line_error(rc, err, "jaxcompare alpha: error:", *needles)


def test_huge_header_inside_npz_refused(capsys, score_files, tmp_path):
    import zipfile

    _huge_header_npy(tmp_path / "scores.npy", shape=(10**6, 10**6))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.write(tmp_path / "scores.npy", "scores.npy")
    rc, out, err = run_main(
        capsys, "alpha", "--candidates", str(tmp_path / "h.npz"), "--reference", str(score_files / "ref.npy")
    )
    assert_one_line_error(rc, err, "'scores'", "truncated or corrupt")


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["demo", "--seed", str(2**70)], ["jaxcompare demo: error:", "--seed", "[0, 2**63 - 1]"]),
        (["alpha", "--candidates", "c", "--reference", "r", "--seed", "-1"], ["--seed"]),
        (["lwr", "--lr", "1e400"], ["--lr", "positive finite"]),
        (["lwr", "--lr", "nan"], ["--lr"]),
        (["alpha", "--candidates", "c", "--reference", "r", "--score", "gap"], ["--score", "invalid choice"]),
        (["ntk", "--model", "m:f", "--params", "p", "--data", "d", "--out", "o", "--kernel", "nope"], ["--kernel"]),
    ],
)
def test_argument_errors_are_one_line(capsys, argv, needles):
    rc, out, err = run_main(capsys, *argv)
    assert_one_line_error(rc, err, *needles)


def test_unwritable_out_fails_before_any_work(capsys, score_files, bad_files, monkeypatch):
    import jaxcompare.study as study

    not_dir = str(bad_files / "afile" / "sub")  # a path under a regular file: no one can write there
    rc, _, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        str(score_files / "cand.npz"),
        "--reference",
        str(score_files / "ref.npy"),
        "--out",
        str(bad_files / "afile" / "a.json"),
    )
    assert_one_line_error(rc, err, "--out", "is not a directory")
    rc, _, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        str(score_files / "cand.npz"),
        "--reference",
        str(score_files / "ref.npy"),
        "--out",
        not_dir + "/a.json",
    )
    assert_one_line_error(rc, err, "--out", "does not exist")
    rc, _, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        str(score_files / "cand.npz"),
        "--reference",
        str(score_files / "ref.npy"),
        "--out",
        str(bad_files),
    )
    assert_one_line_error(rc, err, "--out must name a file")

    def no_work(*a, **k):
        raise AssertionError("the study started although --out is unwritable")

    monkeypatch.setattr(study, "run_study", no_work)
    rc, _, err = run_main(capsys, "demo", "--quick", "--out", not_dir)
    assert_one_line_error(rc, err, "jaxcompare demo: error: --out")
    rc, _, err = run_main(capsys, "demo", "--quick", "--out", str(bad_files / "afile"))
    assert_one_line_error(rc, err, "is a file")
    rc, _, err = run_main(capsys, "lwr", "--n", "20", "--out", not_dir)
    assert_one_line_error(rc, err, "jaxcompare lwr: error: --out")
    rc, _, err = run_main(
        capsys, "ntk", "--model", "m:f", "--params", "p.npz", "--data", "x.npy", "--out", not_dir + "/k.npy"
    )
    assert_one_line_error(rc, err, "jaxcompare ntk: error: --out")
    rc, _, err = run_main(capsys, "demo", "--quick", "--sections", "nonsense", "--out", str(bad_files / "o"))
    assert_one_line_error(rc, err, "unknown section")


def test_alpha_too_few_points_names_what_the_user_set(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.normal(size=(2, 10)))
    np.save(tmp_path / "r.npy", rng.normal(size=(3, 10)))
    rc, _, err = run_main(
        capsys, "alpha", "--candidates", str(tmp_path / "c.npy"), "--reference", str(tmp_path / "r.npy")
    )
    assert_one_line_error(rc, err, "10 test points", "--level", "at least")
    assert "threshold must lie" not in err
    # the number of points the message asks for is enough: the bootstrap compares halves of n = T // 2 points, and
    # the DKW threshold δ_n = sqrt(ln(2/0.01)/n) + 1/n (closed form) must be ≤ 1
    need = int(err.split("use at least ")[1].split()[0])
    dkw = lambda n: np.sqrt(np.log(2 / 0.01) / n) + 1 / n  # noqa: E731
    assert need % 2 == 0 and dkw(need // 2) <= 1 < dkw(need // 2 - 1)


def test_lwr_small_d_has_no_n_top_message(capsys, tmp_path):
    rc, out, err = run_main(
        capsys, "lwr", "--n", "12", "--d", "2", "--h", "8", "--steps", "2", "--out", str(tmp_path / "o")
    )
    assert "n_top" not in err and rc in (0, 1), err


def test_lwr_absurd_lr_is_refused_before_training(capsys, tmp_path):
    rc, _, err = run_main(
        capsys, "lwr", "--n", "40", "--d", "20", "--h", "30", "--lr", "1e30", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(rc, err, "--lr 1e+30", "stability bound")
    rc, _, err = run_main(
        capsys,
        "lwr",
        "--n",
        "40",
        "--d",
        "20",
        "--h",
        "30",
        "--optimizer",
        "adam",
        "--lr",
        "1e30",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(rc, err, "--lr 1e+30", "Adam")


EXIT_MODEL = "import sys\nsys.exit(0)\n"
RAISE_MODEL = "def apply_fn(params, x):\n    raise RuntimeError('boom in user code')\n"


def test_model_module_that_exits_at_import(ntk_files):
    (ntk_files / "exitmod.py").write_text(EXIT_MODEL)
    rc, so, se = run_cli(
        "ntk", "--model", "exitmod:f", "--params", "params.npz", "--data", "x.npy", "--out", "o.npy", cwd=ntk_files
    )
    assert_one_line_error(rc, se, "sys.exit(0)")
    assert so == ""


def test_debug_prints_the_traceback_of_user_code(capsys, ntk_files, monkeypatch):
    monkeypatch.chdir(ntk_files)
    (ntk_files / "raisemod.py").write_text(RAISE_MODEL)
    base = ["ntk", "--model", "raisemod:apply_fn", "--params", "params.npz", "--data", "x.npy", "--out", "o.npy"]
    rc, _, err = run_main(capsys, *base)
    assert_one_line_error(rc, err, "RuntimeError: boom in user code", "--debug")
    rc, _, err = run_main(capsys, *base, "--debug")
    assert rc == 2 and "Traceback" in err and "raisemod.py" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxcompare ntk: error:") and "RuntimeError: boom in user code" in last


# ----------------------------------------------------------------------------------------------------------------
# alpha: per-file keys, logits with --score, metrics, progress, settings in the JSON
# ----------------------------------------------------------------------------------------------------------------
def test_alpha_per_file_keys(capsys, tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(4, 100))
    cand = rng.normal(3.0, 1.0, size=(2, 100))  # far from the reference
    np.savez(tmp_path / "s.npz", cand=cand, ref=ref)
    s = str(tmp_path / "s.npz")
    # --key names the array in both files: candidates scored against themselves -> α̂ = 0 (the reported trap)
    rc, _, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        s,
        "--reference",
        s,
        "--key",
        "cand",
        "--bootstrap",
        "0",
        "--out",
        str(tmp_path / "same.json"),
    )
    assert rc == 0, err
    rc, _, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        s,
        "--reference",
        s,
        "--candidates-key",
        "cand",
        "--reference-key",
        "ref",
        "--bootstrap",
        "0",
        "--out",
        str(tmp_path / "a.json"),
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "a.json").read_text())
    assert min(res["alpha_hat"]) > 0.5
    assert res["settings"]["candidates_key"] == "cand" and res["settings"]["reference_key"] == "ref"
    rc, _, err = run_main(capsys, "alpha", "--candidates", s, "--reference", s)
    assert_one_line_error(rc, err, "several arrays", "--candidates-key")
    rc, _, err = run_main(
        capsys, "alpha", "--candidates", s, "--reference", s, "--key", "cand", "--reference-key", "ref"
    )
    assert_one_line_error(rc, err, "--key")


@pytest.fixture(scope="module")
def logit_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("logits")
    rng = np.random.default_rng(7)
    T, C = 120, 4
    y = rng.integers(0, C, T)
    onehot = np.eye(C)[y]
    ref = 2.0 * onehot[None] + rng.normal(size=(5, T, C))
    cand = np.concatenate([2.0 * onehot[None] + rng.normal(size=(2, T, C)), rng.normal(size=(1, T, C))])
    np.save(d / "cand.npy", cand)
    np.save(d / "ref.npy", ref)
    np.save(d / "y.npy", y)
    return d


def test_alpha_logits_with_labels_prints_metrics(capsys, logit_files, tmp_path):
    d = logit_files
    out = tmp_path / "a.json"
    rc, so, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        str(d / "cand.npy"),
        "--reference",
        str(d / "ref.npy"),
        "--labels",
        str(d / "y.npy"),
        "--bootstrap",
        "4",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert rc == 0, err
    assert "accuracy" in so and "churn" in so and "ece" in so
    res = json.loads(out.read_text())
    st = res["settings"]
    assert st["score"] == "margin" and st["input"] == "logits" and st["bootstrap"] == 4 and st["seed"] == 3
    cand, ref, y = np.load(d / "cand.npy"), np.load(d / "ref.npy"), np.load(d / "y.npy")
    # oracles written here: accuracy, churn against the soft-vote ensemble label, 15-bin ECE
    p = np.exp(cand - cand.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pr = np.exp(ref - ref.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    ens = pr.mean(0).argmax(-1)
    for i, row in enumerate(res["candidates"]):
        assert row["accuracy"] == pytest.approx(np.mean(p[i].argmax(-1) == y), abs=1e-12)
        assert row["churn"] == pytest.approx(np.mean(p[i].argmax(-1) != ens), abs=1e-12)
        conf, pred = p[i].max(-1), p[i].argmax(-1)
        bins = np.minimum((conf * 15).astype(int), 14)
        ece = sum(
            abs(np.mean(pred[bins == b] == y[bins == b]) - conf[bins == b].mean()) * np.mean(bins == b)
            for b in range(15)
            if np.any(bins == b)
        )
        assert row["ece"] == pytest.approx(ece, abs=1e-6)
    # the random-logit candidate is the atypical one
    assert np.argmax(res["alpha_hat"]) == 2
    # the margin scores match a direct reduction fed to the scores path
    marg = np.array([[l[t] - np.delete(l, t).max() for l, t in zip(m, y)] for m in cand])
    np.save(tmp_path / "cm.npy", marg)
    np.save(tmp_path / "rm.npy", np.array([[l[t] - np.delete(l, t).max() for l, t in zip(m, y)] for m in ref]))
    rc, so, err = run_main(
        capsys,
        "alpha",
        "--candidates",
        str(tmp_path / "cm.npy"),
        "--reference",
        str(tmp_path / "rm.npy"),
        "--bootstrap",
        "4",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "m.json"),
    )
    assert rc == 0, err
    assert "bootstrap (4 rounds" in so
    np.testing.assert_allclose(json.loads((tmp_path / "m.json").read_text())["alpha_hat"], res["alpha_hat"], atol=1e-12)


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--score", "margin"], ["--score margin needs --labels"]),
        (["--labels", "y.npy", "--score", "bogus"], ["invalid choice"]),
    ],
)
def test_alpha_logit_errors(capsys, logit_files, monkeypatch, argv, needles):
    monkeypatch.chdir(logit_files)
    rc, _, err = run_main(capsys, "alpha", "--candidates", "cand.npy", "--reference", "ref.npy", *argv)
    assert_one_line_error(rc, err, *needles)


def test_alpha_progress_bar_same_numbers(capsys, logit_files, tmp_path):
    d = logit_files
    base = [
        "alpha",
        "--candidates",
        str(d / "cand.npy"),
        "--reference",
        str(d / "ref.npy"),
        "--score",
        "logit_gap",
        "--bootstrap",
        "4",  # as test_alpha_logits_with_labels_prints_metrics: the same (3 + 5, 120) bootstrap, compiled once
    ]
    rc, _, err_quiet = run_main(capsys, *base, "--out", str(tmp_path / "q.json"))
    assert rc == 0 and "α̂ bootstrap" not in err_quiet  # not a terminal: no bar
    rc, _, err = run_main(capsys, *base, "--progress", "always", "--out", str(tmp_path / "p.json"))
    assert rc == 0 and "α̂ bootstrap" in err
    q, p = (json.loads((tmp_path / f).read_text()) for f in ("q.json", "p.json"))
    np.testing.assert_array_equal(q["alpha_hat"], p["alpha_hat"])  # per-candidate chunks: same numbers


# ----------------------------------------------------------------------------------------------------------------
# lwr: per-optimizer default step, loss and bound printed, divergence flagged (exit 1)
# ----------------------------------------------------------------------------------------------------------------
def test_lwr_adam_default_step_and_report(capsys, tmp_path):
    rc, so, err = run_main(
        capsys,
        "lwr",
        "--n",
        "60",
        "--d",
        "30",
        "--h",
        "45",
        "--steps",
        "10",
        "--optimizer",
        "adam",
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["lr"] == 0.01 and res["config"]["lr_is_default"]
    assert "stability bound" in so and "train loss" in so
    assert res["train_loss_final"] < res["train_loss_init"] and not res["flags"]


def test_lwr_divergence_flagged(capsys, tmp_path):
    # GD at ~17x the stability bound 2n/λ_max(K_0): the top mode of the linearized dynamics is multiplied by
    # |1 - η λ_max/n| ≈ 33 per step; tanh saturation may keep the loss finite, the run must still be flagged
    rc, so, err = run_main(
        capsys,
        "lwr",
        "--n",
        "60",
        "--d",
        "30",
        "--h",
        "45",
        "--steps",
        "10",
        "--lr",
        "1000",
        "--out",
        str(tmp_path / "o"),
    )
    assert rc == 1, err
    assert "warning" in err and "Traceback" not in err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["flags"] and res["above_stability_bound"]
    assert res["config"]["lr"] > res["lr_bound"]
    assert (tmp_path / "o" / "spectra.png").exists()


# ----------------------------------------------------------------------------------------------------------------
# ntk: registry names, deprecated names, parameters written by save_params
# ----------------------------------------------------------------------------------------------------------------
def test_ntk_deprecated_name_and_save_params(capsys, ntk_files, monkeypatch):
    import jax

    import jaxcompare as jc
    from jaxcompare.cli import save_params

    monkeypatch.chdir(ntk_files)
    p = np.load("params.npz")
    save_params({"l1": {"w": p["l1/w"]}, "l2": {"w": p["l2/w"]}}, "saved.npz")
    rc, so, err = run_main(
        capsys,
        "ntk",
        "--model",
        "mymodel:apply_fn",
        "--params",
        "saved.npz",
        "--data",
        "x.npy",
        "--kernel",
        "pseudo",
        "--out",
        "k_old.npy",
    )
    assert rc == 0, err
    assert "deprecated" in err and "pntk0" in err
    rc, so, err = run_main(
        capsys,
        "ntk",
        "--model",
        "mymodel:apply_fn",
        "--params",
        "saved.npz",
        "--data",
        "x.npy",
        "--kernel",
        "pntk0",
        "--out",
        "k_new.npy",
    )
    assert rc == 0 and err == "", err
    k = np.load("k_new.npy")
    np.testing.assert_array_equal(np.load("k_old.npy"), k)
    # oracle: pNTK⁰ = (1/C) <∇ Σ_c f_c(x_i), ∇ Σ_c f_c(x_j)>, by hand for f = tanh(x W1) W2
    w1, w2, x = p["l1/w"], p["l2/w"], np.load("x.npy")
    h = np.tanh(x @ w1)
    s = w2.sum(1)  # d Σ_c f_c / d h
    g_w2 = np.einsum("ia,c->iac", h, np.ones(w2.shape[1]))
    g_w1 = np.einsum("ik,ia->ika", x, (1 - h**2) * s)
    oracle = (np.einsum("iac,jac->ij", g_w2, g_w2) + np.einsum("ika,jka->ij", g_w1, g_w1)) / w2.shape[1]
    np.testing.assert_allclose(k, oracle, rtol=1e-6)
    del jax, jc


# ----------------------------------------------------------------------------------------------------------------
# spectra: per-layer weight spectra of one checkpoint


def test_spectra_command(tmp_path, capsys):
    from jaxcompare import save_params

    rng = np.random.default_rng(0)
    w = rng.standard_normal((120, 40)).astype(np.float32)  # 40 eigenvalues, as in the two spectra tests below
    params = {"Dense_0": {"kernel": w, "bias": np.zeros(40, np.float32)}}
    ckpt = save_params(params, str(tmp_path / "model.safetensors"))
    out = tmp_path / "out"
    assert main(["spectra", "--checkpoint", ckpt, "--n-boot", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Dense_0/kernel" in printed and "Dense_0/bias" in printed  # the bias is listed as skipped
    data = json.loads((out / "spectra.json").read_text())
    (layer,) = data["layers"]
    # eigenvalues of WᵀW/N (N = 120, the larger side) against NumPy's singular values in float64
    oracle = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2 / 120)[::-1]
    got = np.sort(np.asarray(data["eigenvalues"]["Dense_0/kernel"], np.float64))[::-1]
    np.testing.assert_allclose(got, oracle, rtol=1e-4)
    assert layer["stable_rank"] == pytest.approx(oracle.sum() / oracle.max(), rel=1e-4)
    assert data["settings"]["n_boot"] == 5 and (out / "spectra.png").stat().st_size > 0


def test_spectra_command_attention_heads_and_strict_json(tmp_path, capsys):
    """An attention kernel (d, heads, head_dim) is analysed as the map d -> heads·head_dim (--heads merge) or per
    head (--heads split), not as a 1-D convolution; spectra.json is strict JSON (an orthogonal layer has no
    power-law fit: its NaNs are written as null, which JSON.parse and json.loads(parse_constant=...) accept)."""
    from jaxcompare import save_params

    rng = np.random.default_rng(1)
    q = rng.standard_normal((40, 4, 10)).astype(np.float32)
    ortho = np.linalg.qr(rng.standard_normal((40, 40)))[0].astype(np.float32)
    params = {"attention": {"query": {"kernel": q}}, "rot": {"kernel": ortho}}
    ckpt = save_params(params, str(tmp_path / "model.safetensors"))

    def refuse(name):
        raise AssertionError(f"spectra.json holds {name}: not strict JSON")

    cases = (
        ("merge", "heads merged", 1, [q.reshape(40, 40)]),
        ("split", "heads split", 4, [q[:, h] for h in range(4)]),
    )
    for heads, kind, n_mat, blocks in cases:
        out = tmp_path / heads
        argv = ["spectra", "--checkpoint", ckpt, "--n-boot", "5", "--heads", heads, "--out", str(out)]
        assert main(argv) == 0
        capsys.readouterr()
        data = json.loads((out / "spectra.json").read_text(), parse_constant=refuse)
        row = next(r for r in data["layers"] if r["path"] == "attention/query/kernel")
        assert (row["matrix"], row["n_matrices"], data["settings"]["heads"]) == (kind, n_mat, heads)
        oracle = np.sort(
            np.concatenate([np.linalg.svd(b.astype(np.float64), compute_uv=False) ** 2 / 40 for b in blocks])
        )
        got = np.asarray(data["eigenvalues"]["attention/query/kernel"], np.float64)
        np.testing.assert_allclose(got, oracle, rtol=1e-4)
        rot = next(r for r in data["layers"] if r["path"] == "rot/kernel")
        assert rot["alpha"] is None and "no power-law fit" in rot["note"]


def test_spectra_command_stacked_layers(tmp_path, capsys):
    """--stacked REGEX analyses each layer of parameters stacked by nn.scan (axis 0), one row per layer."""
    from jaxcompare import save_params

    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 40, 40)).astype(np.float32)  # 40 eigenvalues a layer: the fits compiled above
    ckpt = save_params({"ScanBlock": {"Dense_0": {"kernel": w, "bias": np.zeros((3, 40), np.float32)}}},
                       str(tmp_path / "m.npz"))  # fmt: skip
    out = tmp_path / "out"
    assert main(["spectra", "--checkpoint", ckpt, "--n-boot", "5", "--stacked", "ScanBlock", "--out", str(out)]) == 0
    capsys.readouterr()
    data = json.loads((out / "spectra.json").read_text())
    assert [r["path"] for r in data["layers"]] == [f"ScanBlock/Dense_0/kernel[{j}]" for j in range(3)]
    for j in range(3):
        oracle = np.sort(np.linalg.svd(w[j].astype(np.float64), compute_uv=False) ** 2 / 40)
        got = np.asarray(data["eigenvalues"][f"ScanBlock/Dense_0/kernel[{j}]"], np.float64)
        np.testing.assert_allclose(got, oracle, rtol=1e-4)
    assert data["settings"]["stacked"] == "ScanBlock"
    assert main(["spectra", "--checkpoint", ckpt, "--stacked", "Nope"]) == 2
    assert "matched no parameter" in capsys.readouterr().err


def test_spectra_command_failures(tmp_path, capsys):
    assert main(["spectra", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not js")
    assert main(["spectra", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxcompare spectra: error:")


def test_ntk_out_must_be_a_file_and_long_tuples_stay_tuples(capsys, ntk_files, monkeypatch):
    """--out naming a directory is refused before any work (it wrote "dir/.npy" or "dir.npy"); an input pytree of
    eleven or more members x/0 … x/10 is a tuple (string order put "10" before "2")."""
    from jaxcompare.cli._ntk import _as_tree

    monkeypatch.chdir(ntk_files)
    monkeypatch.syspath_prepend(str(ntk_files))
    (ntk_files / "outdir").mkdir(exist_ok=True)
    base = ("ntk", "--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy")
    for out in ("outdir", "outdir/"):
        rc, _, err = run_main(capsys, *base, "--out", out)
        assert rc == 2 and "--out must name a file" in err and "Traceback" not in err
    assert not list((ntk_files / "outdir").iterdir()) and not (ntk_files / "outdir.npy").exists()
    leaves = {str(i): np.full((2,), i) for i in range(11)}
    tree = _as_tree(leaves)
    assert isinstance(tree, tuple) and [int(t[0]) for t in tree] == list(range(11))
    assert isinstance(_as_tree({"0": 1, "2": 2}), dict)  # not 0 … k-1: stays a dict


def test_model_given_as_a_file_path_gets_a_hint():
    """--model mymodel.py:f or sub/mod:f: the import error says to give a module name (sub.mod:f)."""
    from jaxcompare.cli._io import CLIError
    from jaxcompare.cli._ntk import import_model

    for spec, want in (("nosuchmod.py:f", "e.g. nosuchmod:f"), ("sub/nosuchmod:f", "e.g. sub.nosuchmod:f")):
        with pytest.raises(CLIError, match=f"not a file path: {want}"):
            import_model(spec)


def test_ntk_precision_reaches_the_programs_and_out_is_replaced_whole(capsys, ntk_files, monkeypatch, tmp_path):
    """--precision is the policy of every product the command compiles (read from the lowered modules JAX writes
    with JAX_DUMP_IR_TO); a bad policy is refused; a write that fails halfway leaves an existing --out as it was
    (it was truncated in place) and no temporary file."""
    import re

    base = ("ntk", "--model", "mymodel:apply_fn", "--params", "params.npz", "--data", "x.npy", "--out", "kp.npy")
    env = dict(ENV, JAX_DUMP_IR_TO=str(tmp_path))
    p = subprocess.run(
        [sys.executable, "-m", "jaxcompare", *base, "--precision", "high"],
        capture_output=True,
        text=True,
        cwd=ntk_files,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    precs = [
        m.group(1)
        for f in tmp_path.glob("*.mlir")
        for m in re.finditer(r"stablehlo\.dot_general[^\n]*?precision = \[(\w+)", f.read_text())
    ]
    assert precs and set(precs) == {"HIGH"}, precs
    monkeypatch.chdir(ntk_files)
    monkeypatch.syspath_prepend(str(ntk_files))
    rc, _, err = run_main(capsys, *base, "--precision", "fast")
    assert rc == 2 and "invalid choice" in err
    before = (ntk_files / "kp.npy").read_bytes()
    real_save = np.save

    def save_then_fail(f, a, *args, **kw):  # the disk fills up halfway through the kernel
        f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    rc, _, err = run_main(capsys, *base, "--kernel", "trntk0")
    monkeypatch.setattr(np, "save", real_save)
    assert rc != 0 and "No space left" in err
    assert (ntk_files / "kp.npy").read_bytes() == before  # was truncated in place
    assert not [q.name for q in ntk_files.iterdir() if q.name.startswith("kp.npy.")]  # no temporary left


def test_alpha_binary_gaps_ensemble_label_and_probability_warning(capsys, tmp_path):
    """With (M, T) binary scores the reference ensemble's label is the sign of the mean gap, as
    ``jc.ensemble_label`` defines it (the command took the argmax of the mean sigmoid: gaps +3, -1, -1 have mean
    +0.33 but mean probability 0.497); scores that all lie in [0, 1] (probabilities passed as gaps) get a warning
    instead of silently wrong accuracy and ECE. Oracle: churn against NumPy's sign of the mean gap."""
    import jaxcompare as jc

    rng = np.random.default_rng(0)
    T = 64
    ref = np.stack([np.full(T, 3.0), np.full(T, -1.0), np.full(T, -1.0)]) + 0.01 * rng.normal(size=(3, T))
    cand = np.full((2, T), 0.5) + 0.01 * rng.normal(size=(2, T))
    y = rng.integers(0, 2, T)
    np.save(tmp_path / "c.npy", cand)
    np.save(tmp_path / "r.npy", ref)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "o.json"
    args = ["alpha", "--candidates", str(tmp_path / "c.npy"), "--reference", str(tmp_path / "r.npy")]
    rc, _, err = run_main(capsys, *args, "--labels", str(tmp_path / "y.npy"), "--bootstrap", "0", "--out", str(out))
    assert rc == 0 and "warning" not in err
    rows = json.loads(out.read_text())["candidates"]
    ens = (ref.mean(axis=0) > 0).astype(int)  # all 1 here; the mean sigmoid (0.497) gave all 0
    assert np.array_equal(np.asarray(jc.metrics.ensemble_label(ref)), ens) and ens.all()
    churn = [float(np.mean((c > 0).astype(int) != ens)) for c in cand]
    np.testing.assert_allclose([r["churn"] for r in rows], churn)
    probs = 1 / (1 + np.exp(-ref))
    np.save(tmp_path / "pr.npy", probs)
    np.save(tmp_path / "pc.npy", 1 / (1 + np.exp(-cand)))
    args = ["alpha", "--candidates", str(tmp_path / "pc.npy"), "--reference", str(tmp_path / "pr.npy")]
    rc, _, err = run_main(capsys, *args, "--labels", str(tmp_path / "y.npy"), "--bootstrap", "0")
    assert rc == 0 and "warning: every score lies in [0, 1]" in err
