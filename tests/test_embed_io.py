"""jaxcompare.embed loaders, demo data, figures and report section."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompare import embed


def test_npz_round_trip_with_names(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 4)).astype(np.float32)
    y = np.r_[np.zeros(6), np.ones(4)].astype(int)
    p = tmp_path / "e.npz"
    embed.save_embeddings(p, X, y, names=("human", "llm"))
    data = embed.load_embeddings(p)
    np.testing.assert_array_equal(data.embeddings, X)
    assert data.embeddings.dtype == np.float32
    np.testing.assert_array_equal(data.labels, y)
    assert data.names == ("human", "llm")


def test_npz_string_labels_single_array_and_custom_key(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    np.savez(tmp_path / "s.npz", embeddings=X, labels=np.array(["b", "a", "b", "a"]))
    data = embed.load_embeddings(tmp_path / "s.npz")
    assert data.names == ("a", "b")
    np.testing.assert_array_equal(data.labels, [1, 0, 1, 0])
    assert data.embeddings.dtype == np.float64
    np.savez(tmp_path / "one.npz", vectors=X.astype(np.float16))
    one = embed.load_embeddings(tmp_path / "one.npz")
    assert one.labels is None and one.names == () and one.embeddings.dtype == np.float32
    np.savez(tmp_path / "two.npz", vecs=X, other=X)
    with pytest.raises(ValueError, match="no array named 'embeddings'"):
        embed.load_embeddings(tmp_path / "two.npz")
    np.testing.assert_array_equal(embed.load_embeddings(tmp_path / "two.npz", embeddings_key="vecs").embeddings, X)


def test_npy_and_several_files(tmp_path):
    a = np.ones((3, 2))
    b = np.zeros((2, 2))
    np.save(tmp_path / "human.npy", a)
    np.save(tmp_path / "gpt.npy", b)
    data = embed.load_embeddings([tmp_path / "human.npy", tmp_path / "gpt.npy"])
    np.testing.assert_array_equal(data.embeddings, np.r_[a, b])
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
    assert data.names == ("human", "gpt")
    np.save(tmp_path / "wide.npy", np.ones((2, 3)))
    with pytest.raises(ValueError, match="different numbers of features"):
        embed.load_embeddings([tmp_path / "human.npy", tmp_path / "wide.npy"])
    embed.save_embeddings(tmp_path / "lab.npz", a, [0, 1, 1])
    with pytest.raises(ValueError, match="has labels of its own"):
        embed.load_embeddings([tmp_path / "lab.npz", tmp_path / "gpt.npy"])


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("f0,f1,source\n1.0,2.0,human\n3,4,llm\n5,6,human\n")
    data = embed.load_embeddings(tmp_path / "h.csv")
    np.testing.assert_array_equal(data.embeddings, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(data.labels, [0, 1, 0])
    assert data.names == ("human", "llm")
    (tmp_path / "n.tsv").write_text("1\t2\n3\t4\n")
    plain = embed.load_embeddings(tmp_path / "n.tsv")
    assert plain.labels is None and plain.embeddings.shape == (2, 2)
    (tmp_path / "r.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="row 2 has 1 fields"):
        embed.load_embeddings(tmp_path / "r.csv")


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such embeddings file"):
        embed.load_embeddings(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unknown extension"):
        embed.load_embeddings(tmp_path / "x.txt")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="parquet is not supported"):
        embed.load_embeddings(tmp_path / "x.parquet")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="1 NaN/inf entries in 1 rows"):
        embed.load_embeddings(tmp_path / "nan.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        embed.load_embeddings(tmp_path / "obj.npy")
    np.save(tmp_path / "v.npy", np.ones(3))
    with pytest.raises(ValueError, match="2-D array"):
        embed.load_embeddings(tmp_path / "v.npy")
    np.savez(tmp_path / "len.npz", embeddings=np.ones((3, 2)), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        embed.load_embeddings(tmp_path / "len.npz")
    np.savez(tmp_path / "neg.npz", embeddings=np.ones((2, 2)), labels=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="must be integers"):
        embed.load_embeddings(tmp_path / "neg.npz")
    with pytest.raises(ValueError, match="writes .npz"):
        embed.save_embeddings(tmp_path / "a.npy", np.ones((2, 2)))


def test_demo_embeddings_deterministic_and_informative():
    d1 = embed.make_demo_embeddings(jax.random.key(0), n_per_source=100, dim=16)
    d2 = embed.make_demo_embeddings(jax.random.key(0), n_per_source=100, dim=16)
    assert d1.embeddings.shape == (200, 16) and d1.embeddings.dtype == jnp.float32
    np.testing.assert_array_equal(d1.embeddings, d2.embeddings)
    np.testing.assert_array_equal(np.bincount(np.asarray(d1.labels)), [100, 100])
    assert set(np.asarray(d1.digits).tolist()) <= set(range(10)) and d1.names == ("original", "noised")
    assert np.all(np.isfinite(np.asarray(d1.embeddings)))
    with pytest.raises(ValueError, match="n_per_source must be <= 898"):
        embed.make_demo_embeddings(jax.random.key(0), n_per_source=900)
    with pytest.raises(ValueError, match="noise must lie"):
        embed.make_demo_embeddings(jax.random.key(0), noise=-1.0)


def test_plots_return_figures():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = np.arange(60) % 2
    fig = embed.plot_projection(X[:, :2], y, names=("a", "b"), axis_label="PC")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections) == 2 and ax.get_xlabel() == "PC1"
    fig1 = embed.plot_projection(X[:, 0], y)
    assert len(fig1.axes[0].patches) > 0
    fig2 = embed.plot_microscope(X, y, names=("a", "b"), hidden=np.arange(60) % 3)
    assert isinstance(fig2, Figure) and len(fig2.axes) == 4  # three panels and a colour bar
    with pytest.raises(ValueError, match="names has 1 entries"):
        embed.plot_projection(X[:, :2], y, names=("a",))
    with pytest.raises(ValueError, match="out of range"):
        embed.plot_projection(X[:, :2], y, dims=(0, 2))


@pytest.mark.slow
def test_report_section(tmp_path):
    demo = embed.make_demo_embeddings(jax.random.key(0), n_per_source=60, dim=8)
    md = embed.microscope_report(
        demo.embeddings,
        demo.labels,
        key=jax.random.key(1),
        names=demo.names,
        figure_path=tmp_path / "m.png",
        n_permutations=49,
    )
    assert md.startswith("## Embedding microscope")
    assert "original vs noised" in md and "(m.png)" in md
    assert (tmp_path / "m.png").stat().st_size > 0


def test_loader_refuses_what_it_used_to_misread(tmp_path):
    """Each case was read silently wrong or failed with a raw error: a byte-order mark hid the label column (the
    labels became a feature), an unnamed index column became a feature, a blank label shifted every code, one
    name string became its letters, bytes names read "b'..'", a label of 10**7 made ten million names (320 MB
    for 4 rows), corrupt files raised zipfile/EOF errors, an .npy named .npz a TypeError."""
    X = np.arange(8.0).reshape(4, 2)
    (tmp_path / "bom.csv").write_text("label,f1,f2\na,1,2\nb,3,4\n", encoding="utf-8-sig")
    data = embed.load_embeddings(tmp_path / "bom.csv")
    assert data.embeddings.shape == (2, 2) and data.names == ("a", "b") and data.labels.tolist() == [0, 1]
    (tmp_path / "index.csv").write_text(",f1,f2\n0,1,2\n1,3,4\n")
    with pytest.raises(ValueError, match="header column 1 has no name"):
        embed.load_embeddings(tmp_path / "index.csv")
    (tmp_path / "blank.csv").write_text("label,f1,f2\n,1,2\n0,3,4\n1,3,4\n")
    with pytest.raises(ValueError, match=r"1 rows have an empty label \(first data rows: \[1\]\)"):
        embed.load_embeddings(tmp_path / "blank.csv")
    with pytest.raises(ValueError, match="names must be a 1-D sequence"):
        embed.save_embeddings(tmp_path / "n.npz", X[:2], [0, 0], names=np.array("human"))
    embed.save_embeddings(tmp_path / "b.npz", X[:2], [0, 1], names=[b"human", b"llm"])
    assert embed.load_embeddings(tmp_path / "b.npz").names == ("human", "llm")
    with pytest.raises(ValueError, match=r"reach 10000000 for 4 samples.*np.unique"):
        embed.save_embeddings(tmp_path / "big.npz", X, [0, 1, 2, 10**7])
    assert not (tmp_path / "big.npz").exists()
    np.savez(tmp_path / "ok.npz", embeddings=X)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:100])
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "ok.npy", X)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:140])
    for name in ("cut.npz", "empty.npz", "cut.npy"):
        with pytest.raises(ValueError, match=f"{name}: the file is truncated or corrupt"):
            embed.load_embeddings(tmp_path / name)
    with open(tmp_path / "npy.npz", "wb") as f:
        np.save(f, X)
    with pytest.raises(ValueError, match="not an .npz archive"):
        embed.load_embeddings(tmp_path / "npy.npz")
