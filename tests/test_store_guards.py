"""Guards of the two on-disk stores (``jc.kernel_to_disk``, ``jc.project_gradients(path=)``): files of a store
without its ledger are refused, never overwritten; an edited ledger or a lost file never discards computed work
silently; the block size is capped at N; ``path=""`` and a file as path are refused; temporary files of a killed
writer are removed (only those of dead processes of this host, only while no writer holds the store); a resume
refused for a changed numeric mode says so; ``jc.load_kernel`` reads a finished kernel checked against its ledger.

Oracles: the in-memory kernel / features (bit-identical to a store's), and the files' bytes and mtimes (untouched)."""

import json
import os
import socket
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from ntk_models import mlp

import jaxcompare as jc
from jaxcompare.ntk import _ooc
from jaxcompare.ntk._disk import DirLock

F, P = mlp(jax.random.key(0))
X = jax.random.normal(jax.random.key(1), (6, 5))  # block_size 4: 2 blocks, 3 tiles
K = jc.trace_ntk(F)
PROJ = jc.random_projection(jax.random.key(2), 8)


def _k2d(path, **kw):
    return jc.kernel_to_disk(K, P, kw.pop("x", X), path=path, block_size=kw.pop("block_size", 4), **kw)


def _pg(path, **kw):
    return jc.project_gradients(F, P, kw.pop("x", X), PROJ, block_size=3, path=path, **kw)


def _snapshot(path):
    """Every file's bytes, and the mtime of the arrays (a reopen rewrites its ledger with the same content)."""
    return {
        p.name: (p.stat().st_mtime_ns if p.suffix == ".npy" else 0, p.read_bytes())
        for p in path.iterdir()
        if not p.name.startswith(".")
    }


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*a, **kw)


def test_store_files_without_a_ledger_are_refused_not_overwritten(tmp_path):
    want = np.asarray(K(P, X))
    done = tmp_path / "done"
    _k2d(done)
    (done / "state.json").unlink()  # a finished store whose ledger was lost
    before = _snapshot(done)
    with pytest.raises(ValueError, match=r"kernel\.npy, norms\.npy but no ledger .*overwrite=True"):
        _k2d(done)
    assert _snapshot(done) == before
    np.testing.assert_allclose(_quiet(_k2d, done, overwrite=True), want, rtol=1e-12)  # asked for: silently

    mine = tmp_path / "mine"  # a user's own directory
    mine.mkdir()
    np.save(mine / "kernel.npy", np.arange(4.0))
    (mine / "state.1.json").write_text("{}")
    (mine / "notes.txt").write_text("mine")
    before = _snapshot(mine)
    with pytest.raises(ValueError, match=r"kernel\.npy, state\.1\.json but no ledger"):
        _k2d(mine)
    assert _snapshot(mine) == before

    feats = tmp_path / "feats"
    feats.mkdir()
    np.save(feats / "features.npy", np.arange(5.0))
    np.save(feats / "block_000001.npy", np.arange(3.0))
    np.save(feats / "block_notes.npy", np.arange(2.0))  # not a store's name: never touched
    before = _snapshot(feats)
    with pytest.raises(ValueError, match=r"block_000001\.npy, features\.npy but no ledger .*project_gradients"):
        _pg(feats)
    assert _snapshot(feats) == before
    got = _pg(feats, overwrite=True)
    np.testing.assert_array_equal(got, jc.project_gradients(F, P, X, PROJ, block_size=3))
    assert _snapshot(feats)["block_notes.npy"] == before["block_notes.npy"]


def test_discarded_work_is_never_silent(tmp_path):
    """An edited shape/dtype in the ledger, a tile listed without its checksum, lost norms, a lost block: each is
    recomputed with a warning."""
    want = np.asarray(K(P, X))
    _k2d(tmp_path / "k")
    state_path = tmp_path / "k" / "state.json"
    good = state_path.read_text()
    for edit, match in (
        (dict(shape=[6, 5]), "the ledger was edited"),
        (dict(dtype="<f4"), "the ledger was edited"),
        (dict(checksums={}), "do not match their checksums"),
    ):
        state_path.write_text(json.dumps(dict(json.loads(good), **edit)))
        with pytest.warns(RuntimeWarning, match=match):
            np.testing.assert_allclose(_k2d(tmp_path / "k"), want, rtol=1e-12)
        good = state_path.read_text()
    (tmp_path / "k" / "norms.npy").unlink()
    with pytest.warns(RuntimeWarning, match="norms.npy is missing"):
        np.testing.assert_allclose(_k2d(tmp_path / "k"), want, rtol=1e-12)

    ref = jc.project_gradients(F, P, X, PROJ, block_size=3)
    _pg(tmp_path / "p")
    (tmp_path / "p" / "block_000001.npy").unlink()
    (tmp_path / "p" / "features.npy").unlink()
    with pytest.warns(RuntimeWarning, match=r"1 stored block\(s\) .*\(\[1\]\) are missing or do not match"):
        np.testing.assert_array_equal(_pg(tmp_path / "p"), ref)


def test_block_size_is_capped_at_the_larger_input(tmp_path, monkeypatch):
    """A block bigger than N is one block of N rows (an N=10 kernel with block_size=100000 aborted in XLA: the
    inputs were padded to 100000 rows); the store records the capped size and resumes with any block >= N; a
    store begun before the cap with a bigger block continues with it."""
    want = np.asarray(K(P, X))
    np.testing.assert_allclose(_k2d(tmp_path / "a", block_size=10**5), want, rtol=1e-12)
    assert json.loads((tmp_path / "a" / "state.json").read_text())["block_size"] == 6
    before = _snapshot(tmp_path / "a")
    _quiet(_k2d, tmp_path / "a", block_size=64)  # reopened, not refused or recomputed
    assert _snapshot(tmp_path / "a") == before
    x2 = X[:2]
    k12 = jc.kernel_to_disk(K, P, X, x2, path=tmp_path / "b", block_size=100, progress_bar=False)
    np.testing.assert_allclose(k12, np.asarray(K(P, X, x2)), rtol=1e-12)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["block_size"] == 6

    monkeypatch.setattr(_ooc, "_block_for", lambda root, bs, n1, n2: bs)  # a store made before the cap
    _k2d(tmp_path / "old", block_size=8)
    monkeypatch.undo()
    before = _snapshot(tmp_path / "old")
    np.testing.assert_allclose(_quiet(_k2d, tmp_path / "old", block_size=100), want, rtol=1e-12)
    assert _snapshot(tmp_path / "old") == before


def test_empty_path_and_a_file_as_path_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="path is empty"):
        _k2d("")
    with pytest.raises(ValueError, match="path is empty"):
        _pg("")
    assert os.listdir(tmp_path) == []  # nothing written into the current directory
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="afile is an existing file"):
        _k2d(tmp_path / "afile")
    for call in (_k2d, _pg):  # a file on the way gave a bare NotADirectoryError
        with pytest.raises(ValueError, match=r"afile is a file, not a directory"):
            call(tmp_path / "afile" / "store")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("which", ["k2d", "pg"])
def test_temporary_files_of_dead_writers_are_removed(tmp_path, which):
    """Temporaries ``<file>.<host>.<pid>.tmp`` of a store file whose process is gone are removed on the next open;
    those of a live process, of another host, of files the store does not write, and any while another writer
    holds the store, are kept."""
    run, name = (_k2d, "kernel.npy") if which == "k2d" else (_pg, "features.npy")
    run(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process
    host = socket.gethostname()
    dead = [f"{name}.{host}.{child.pid}.tmp", f"state.1.json.{host}.{child.pid}.tmp"]
    kept = [
        f"{name}.{host}.{os.getpid()}.tmp",  # a live writer (this process)
        f"{name}.other-host.{child.pid}.tmp",
        f"notes.txt.{host}.{child.pid}.tmp",
    ]
    for f in dead + kept:
        (tmp_path / f).write_bytes(b"\0" * 64)
    other = DirLock(tmp_path)
    assert other.acquire(DirLock.STORE, shared=True, block=False)  # another writer in the store
    try:
        _quiet(run, tmp_path)
    finally:
        other.close()
    assert all((tmp_path / f).exists() for f in dead + kept)
    _quiet(run, tmp_path)
    assert not any((tmp_path / f).exists() for f in dead) and all((tmp_path / f).exists() for f in kept)


def test_a_changed_x64_mode_is_named(tmp_path):
    """The same float64 NumPy inputs with jax_enable_x64 off (a float32 kernel), then on: the refusal names the
    mode, not "different inputs"; a store that records no mode gets a hint that it may have changed."""
    p64 = jax.tree_util.tree_map(np.asarray, P)
    x64 = np.asarray(X)
    with jax.enable_x64(False):
        k32 = jc.kernel_to_disk(K, p64, x64, path=tmp_path / "k", block_size=4, progress_bar=False)
        assert k32.dtype == np.float32
        jc.project_gradients(F, p64, x64, PROJ, block_size=3, path=tmp_path / "p")
    with pytest.raises(ValueError, match="another numeric mode .*jax_enable_x64 was off .* on now"):
        jc.kernel_to_disk(K, p64, x64, path=tmp_path / "k", block_size=4)
    with pytest.raises(ValueError, match="another numeric mode .*jax_enable_x64 was off .* on now"):
        jc.project_gradients(F, p64, x64, PROJ, block_size=3, path=tmp_path / "p")
    with jax.enable_x64(False), pytest.raises(ValueError, match="inputs' dtypes were float64 and are float32, float64"):
        jc.kernel_to_disk(K, p64, x64.astype(np.float32), path=tmp_path / "k", block_size=4)
    for store in ("k", "p"):  # a store made before the mode was recorded
        state = json.loads((tmp_path / store / "state.json").read_text())
        del state["x64"], state["input_dtypes"]
        (tmp_path / store / "state.json").write_text(json.dumps(state))
    with jax.enable_x64(False):  # the same dtype (float32): only a hint
        with pytest.raises(ValueError, match=r"different inputs .*\(or jax_enable_x64"):
            jc.kernel_to_disk(K, p64, x64 + 1.0, path=tmp_path / "k", block_size=4)
    with pytest.raises(ValueError, match="fingerprint mismatch; or jax_enable_x64"):
        jc.project_gradients(F, p64, x64, PROJ, block_size=3, path=tmp_path / "p")


def test_load_kernel_checks_the_ledger(tmp_path):
    want = np.asarray(_k2d(tmp_path / "k"))
    got = _quiet(jc.load_kernel, tmp_path / "k")
    assert isinstance(got, np.memmap) and not got.flags.writeable
    np.testing.assert_array_equal(got, want)
    del got
    mm = np.load(tmp_path / "k" / "kernel.npy", mmap_mode="r+")
    mm[5, 1] += 1.0  # an entry of a mirrored tile
    mm.flush()
    del mm
    with pytest.raises(ValueError, match="0 of 3 tiles are not written yet and 1 do not match their checksums"):
        jc.load_kernel(str(tmp_path / "k"))
    with pytest.warns(RuntimeWarning, match="not written yet"):  # task 0 of 2: tiles 0 and 2
        _k2d(tmp_path / "half", process_index=0, process_count=2)
    with pytest.raises(ValueError, match="1 of 3 tiles are not written yet"):
        jc.load_kernel(tmp_path / "half")
    (tmp_path / "half" / "kernel.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="truncated"):
        jc.load_kernel(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="no kernel_to_disk store"):
        jc.load_kernel(tmp_path / "nothing")
    _pg(tmp_path / "p")
    with pytest.raises(ValueError, match="cannot be read as a kernel_to_disk ledger"):
        jc.load_kernel(tmp_path / "p")
    with pytest.raises(ValueError, match="path is empty"):
        jc.load_kernel("")


@pytest.fixture
def read_only_dirs(monkeypatch):
    """``make(path)``: ``path`` becomes read-only, as on an archive or a read-only mount. Its write permission is
    removed (a user other than root then cannot write it) and ``os.access`` reports it unwritable (root may write
    anywhere, but not on a read-only mount, where ``os.access`` says so). Permissions restored afterwards."""
    real, made = os.access, []

    def access(p, mode, *a, **kw):
        if mode & os.W_OK and os.path.realpath(p) in made:
            return False
        return real(p, mode, *a, **kw)

    def make(path):
        made.append(os.path.realpath(path))
        os.chmod(path, 0o555)

    monkeypatch.setattr(os, "access", access)
    yield make
    for p in made:
        os.chmod(p, 0o755)


def test_finished_stores_on_read_only_storage_are_read_not_refused(tmp_path, read_only_dirs):
    """A finished store copied to read-only storage raised PermissionError from deep inside (the lock files), so a
    script rerun against the archive could not get its own kernel. Now the finished kernel (features) of the same
    inputs comes back verified, nothing is written, and anything else is refused with the reason."""
    import shutil

    want_k, want_f = np.asarray(_k2d(tmp_path / "k")), np.asarray(_pg(tmp_path / "p"))
    shutil.copytree(tmp_path / "k", tmp_path / "k_bad")
    mm = np.load(tmp_path / "k_bad" / "kernel.npy", mmap_mode="r+")
    mm[0, 1] += 1.0
    mm.flush()
    del mm
    with pytest.warns(RuntimeWarning, match="not written yet"):
        _k2d(tmp_path / "k_half", process_index=0, process_count=2)
    dirs = ("k", "p", "k_bad", "k_half")
    for d in dirs:
        read_only_dirs(tmp_path / d)
    before = {d: (sorted(os.listdir(tmp_path / d)), _snapshot(tmp_path / d)) for d in dirs}

    got = _quiet(_k2d, tmp_path / "k")
    assert isinstance(got, np.memmap) and not got.flags.writeable
    np.testing.assert_array_equal(got, want_k)
    np.testing.assert_array_equal(_quiet(_pg, tmp_path / "p"), want_f)
    with pytest.raises(PermissionError, match="not writable, and its kernel was computed with different inputs"):
        _k2d(tmp_path / "k", x=X + 1.0)
    with pytest.raises(PermissionError, match="not writable, and its features are of other data"):
        _pg(tmp_path / "p", x=X + 1.0)
    with pytest.raises(PermissionError, match="1 do not match their checksums"):
        _k2d(tmp_path / "k_bad")
    with pytest.raises(PermissionError, match="1 of 3 tiles are not written yet") as half:
        _k2d(tmp_path / "k_half")
    assert "rerun kernel_to_disk" not in str(half.value)  # advice that cannot work on read-only storage
    with pytest.raises(PermissionError, match="no kernel_to_disk ledger"):
        _k2d(tmp_path / "p")
    p64, x64 = jax.tree_util.tree_map(np.asarray, P), np.asarray(X)
    with jax.enable_x64(False):  # the stores were written with x64 on: the refusal names the mode, not "inputs"
        with pytest.raises(PermissionError, match="another numeric mode .*jax_enable_x64 was on .* off now"):
            jc.kernel_to_disk(K, p64, x64, path=tmp_path / "k", block_size=4)
        with pytest.raises(PermissionError, match="another numeric mode .*jax_enable_x64 was on .* off now"):
            jc.project_gradients(F, p64, x64, PROJ, block_size=3, path=tmp_path / "p")
    assert {d: (sorted(os.listdir(tmp_path / d)), _snapshot(tmp_path / d)) for d in dirs} == before  # nothing written
    gone = tmp_path / "p_gone"
    shutil.copytree(tmp_path / "p", gone)
    os.chmod(gone, 0o755)
    (gone / "features.npy").unlink()
    read_only_dirs(gone)
    with pytest.raises(PermissionError, match="features.npy is missing"):
        _pg(gone)
