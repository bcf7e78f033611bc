"""``project_gradients(path=)`` split over processes sharing a directory (:mod:`jaxcompare.ntk._project_disk`), as
the tasks of an array job do it (``process_index=``/``process_count=``), in this process: disjoint shares (block
``b`` to process ``b mod P``), assembly by the process that finds every block done, resume of a process that died by
rerunning it alone, verification of every stored block. The 2-process ``jax.distributed`` run is in
tests/test_distributed.py (mode ``disk``).

Oracles: the float64 forward-mode Jacobian of ntk_models times the projection's matrix (independent of the package's
feature code), and a one-process in-memory run (bit-identical)."""

import json
import os
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from ntk_models import mlp, oracle_jacobian

import jaxcompare as jc
from jaxcompare.ntk import _project_disk
from jaxcompare.ntk._disk import DirLock

F, P = mlp(jax.random.key(0))
X = jax.random.normal(jax.random.key(1), (10, 5))  # block_size 3: 4 blocks, shares {0, 2} and {1, 3}
PROJ = jc.random_projection(jax.random.key(2), 8)
BS = 3


def _run(path, task=None, count=2, **kw):
    split = {} if task is None else dict(process_index=task, process_count=count)
    return jc.project_gradients(F, P, X, PROJ, block_size=BS, path=path, **split, **kw)


@pytest.fixture(scope="module")
def ref():
    """One process, in memory; checked against the float64 oracle ``J Rᵀ``."""
    one = np.asarray(jc.project_gradients(F, P, X, PROJ, block_size=BS))
    rows = PROJ.rows(P, jnp.arange(PROJ.dim))  # the projection's matrix R (dim x P), row by row
    r = np.concatenate([np.asarray(l).reshape(PROJ.dim, -1) for l in jax.tree_util.tree_leaves(rows)], axis=1)
    assert r.shape[1] == ravel_pytree(P)[0].size
    np.testing.assert_allclose(one, oracle_jacobian(F, P, X) @ r.T, rtol=1e-10, atol=1e-12)
    return one


def _blocks(led):
    return set(map(int, json.loads(led.read_text())["blocks"]))


def _mtimes(path):
    return {p.name: p.stat().st_mtime_ns for p in path.glob("block_*.npy")}


def test_array_job_shares_assembly_and_reopen(tmp_path, ref):
    """Task 0 computes blocks {0, 2}, finds {1, 3} missing: warns (naming process 1) and returns None, no
    features.npy; task 1 computes {1, 3} and assembles: bit-identical to one process; a rerun reopens it without
    computing (block files untouched)."""
    with pytest.warns(RuntimeWarning, match=r"2 of 4 blocks .* process\(es\) \[1\] of 2"):
        assert _run(tmp_path, 0) is None
    assert _blocks(tmp_path / "state.json") == {0, 2} and not (tmp_path / "features.npy").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _run(tmp_path, 1)
    assert isinstance(out, np.memmap) and np.array_equal(out, ref) and out.dtype == ref.dtype
    assert _blocks(tmp_path / "state.1.json") == {1, 3}
    assert json.loads((tmp_path / "state.json").read_text())["complete"]
    before = _mtimes(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for again in (_run(tmp_path, 0), _run(tmp_path), _run(tmp_path, 2, count=3)):
            assert np.array_equal(again, ref)
    assert _mtimes(tmp_path) == before


def test_killed_task_is_resumed_alone(tmp_path, ref, monkeypatch):
    """Task 1 dies after writing its first block (an exception in its second write): rerun alone it computes only
    the missing block (the others' files untouched) and completes the store; process_count=1 completes a store too."""
    with pytest.warns(RuntimeWarning, match="not written yet"):
        _run(tmp_path, 0)
    real, writes = _project_disk.atomic_npy, []

    def dying(path, a, *args):
        writes.append(path.name)
        if len(writes) == 2:
            raise KeyboardInterrupt("killed")
        real(path, a, *args)

    monkeypatch.setattr(_project_disk, "atomic_npy", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, 1)
    monkeypatch.setattr(_project_disk, "atomic_npy", real)
    assert _blocks(tmp_path / "state.1.json") == {1} and not (tmp_path / "block_000003.npy").exists()
    with pytest.warns(RuntimeWarning, match=r"1 of 4 blocks .* \[1\] of 2"):
        assert _run(tmp_path, 0) is None  # task 0 rerun: nothing to do, still incomplete
    before = _mtimes(tmp_path)
    out = _run(tmp_path, 1)
    after = _mtimes(tmp_path)
    assert np.array_equal(out, ref)
    assert {k for k in after if after[k] != before.get(k)} == {"block_000003.npy"}
    # another store: task 1 only, then one process (process_count=1) computes the rest
    other = tmp_path / "other"
    with pytest.warns(RuntimeWarning, match=r"\[0\] of 2"):
        _run(other, 1)
    assert np.array_equal(_run(other, 0, count=1), ref)
    assert _blocks(other / "state.json") == {0, 2}


def test_damaged_blocks_and_features_are_recomputed(tmp_path, ref):
    """A block of another process's share edited after the run: the assembler recomputes it (with a warning); an
    edited features.npy is reassembled; a lost block of the own share is recomputed (with a warning)."""
    _run(tmp_path)  # one process: every block
    b1 = np.load(tmp_path / "block_000001.npy")
    np.save(tmp_path / "block_000001.npy", b1 + 1.0)
    mm = np.load(tmp_path / "features.npy", mmap_mode="r+")
    mm[0, 0, 0] += 1.0
    mm.flush()
    del mm
    with pytest.warns(RuntimeWarning) as rec:
        out = _run(tmp_path, 0)  # block 1 belongs to process 1
    msgs = " ".join(str(w.message) for w in rec)
    assert "reassembling" in msgs and "do not match their checksums" in msgs
    assert np.array_equal(out, ref) and np.array_equal(np.load(tmp_path / "block_000001.npy"), ref[3:6])
    (tmp_path / "block_000002.npy").unlink()
    (tmp_path / "features.npy").unlink()
    with pytest.warns(RuntimeWarning, match=r"1 stored block\(s\) .*\(\[2\]\) are missing"):
        assert np.array_equal(_run(tmp_path, 0), ref)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # task 0 may find task 1's blocks missing (or vice versa)
def test_concurrent_tasks_race_free(tmp_path, ref):
    """Two tasks at the same time on one path (threads: flock locks are per open file): at least one assembles,
    every returned array is the one-process features, the ledgers disjoint; a second writer with the same index
    is refused."""
    results, errors = {}, []

    def task(i):
        try:
            results[i] = _run(tmp_path, i)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=task, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    done = [r for r in results.values() if r is not None]
    assert done and all(np.array_equal(r, ref) for r in done)
    assert _blocks(tmp_path / "state.json") == {0, 2} and _blocks(tmp_path / "state.1.json") == {1, 3}
    held = DirLock(tmp_path)
    assert held.acquire(DirLock.writer(1), block=False)
    try:
        with pytest.raises(RuntimeError, match="process_index=1"):
            _run(tmp_path, 1)
    finally:
        held.close()


def test_validation_and_foreign_stores(tmp_path):
    with pytest.raises(ValueError, match="process_index and process_count go together"):
        jc.project_gradients(F, P, X, PROJ, block_size=BS, path=tmp_path, process_index=0)
    with pytest.raises(ValueError, match="process_index must be <= 1"):
        _run(tmp_path, 2)
    with pytest.raises(ValueError, match="process_count must be >= 1"):
        _run(tmp_path, 0, count=0)
    with pytest.raises(TypeError, match="process_index must be an integer"):
        _run(tmp_path, 0.0)
    with pytest.raises(ValueError, match="pass path="):
        jc.project_gradients(F, P, X, PROJ, process_index=0, process_count=2)
    assert not os.listdir(tmp_path)  # nothing written before the arguments were checked
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        _run(tmp_path, 0)
    with pytest.warns(RuntimeWarning, match="not written yet"):
        _run(tmp_path, 0, overwrite=True)
    with pytest.raises(ValueError, match="fingerprint"):  # other data: refused
        jc.project_gradients(F, P, X + 1.0, PROJ, block_size=BS, path=tmp_path, process_index=1, process_count=2)


def test_store_of_an_older_sketch_layout_is_refused(tmp_path, monkeypatch):
    """Features of the structured sketch's previous hash layout (``layout = 1``: every chunk folded with its own
    offsets) are another sketch: a store begun under it must not be completed under today's layout (a kernel of the
    mixed features would be wrong between blocks); ``overwrite=True`` starts it afresh."""
    from jaxcompare.ntk._sketch import StructuredProjection

    proj = jc.structured_projection(jax.random.key(3), 8)
    run = dict(block_size=BS, path=tmp_path, process_count=2)
    monkeypatch.setattr(StructuredProjection, "layout", 1)
    with pytest.warns(RuntimeWarning, match="not written yet"):  # blocks 0 and 2 under the old layout
        jc.project_gradients(F, P, X, proj, process_index=0, **run)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="projection layout"):
        jc.project_gradients(F, P, X, proj, process_index=1, **run)
    with pytest.warns(RuntimeWarning, match="not written yet"):
        jc.project_gradients(F, P, X, proj, process_index=1, overwrite=True, **run)
    got = jc.project_gradients(F, P, X, proj, process_index=0, **run)
    np.testing.assert_array_equal(got, jc.project_gradients(F, P, X, proj, block_size=BS))


def test_store_refuses_another_sparse_nnz(tmp_path):
    """A sparse sketch with another number of nonzeros per column is another projection: its store is refused."""
    one = jc.random_projection(jax.random.key(4), 8, "sparse", nnz=1)
    two = jc.random_projection(jax.random.key(4), 8, "sparse", nnz=2)
    jc.project_gradients(F, P, X, one, block_size=BS, path=tmp_path)
    with pytest.raises(ValueError, match="fingerprint"):
        jc.project_gradients(F, P, X, two, block_size=BS, path=tmp_path)
    got = jc.project_gradients(F, P, X, two, block_size=BS, path=tmp_path, overwrite=True)
    np.testing.assert_array_equal(got, jc.project_gradients(F, P, X, two, block_size=BS))


_X64_CHILD = """
import sys, numpy as np, jax, jax.numpy as jnp
import jaxcompare as jc
d = np.load(sys.argv[1])
p = {"w": jnp.asarray(d["w"]), "v": jnp.asarray(d["v"])}
f = lambda q, x: jnp.tanh(x @ q["w"]) @ q["v"]
out = {k: np.asarray(jc.project_gradients(f, p, jnp.asarray(d["x"]), jc.random_projection(jax.random.key(5), 16, k)))
       for k in ("sparse", "rademacher", "gaussian")}
np.savez(sys.argv[2], **out)
"""


def test_one_key_one_projection_with_or_without_x64(tmp_path):
    """The random kinds draw their signs and rows from 32-bit words: a float32 model's features are bit-identical
    with ``jax_enable_x64`` on (this process) and off (a child process). (``jax.random.rademacher`` compares float64
    uniforms under x64: the same key gave another projection, and a shared store mixed the two.)"""
    import subprocess
    import sys

    g = np.random.default_rng(0)
    d = dict(w=g.standard_normal((3, 6)).astype(np.float32), v=g.standard_normal((6, 2)).astype(np.float32))
    d["x"] = g.standard_normal((5, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **d)
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_ENABLE_X64"] = "0"
    script = tmp_path / "child.py"
    script.write_text(_X64_CHILD)
    subprocess.run([sys.executable, script, tmp_path / "in.npz", tmp_path / "out.npz"], env=env, check=True)
    child = np.load(tmp_path / "out.npz")
    assert jax.config.jax_enable_x64
    p = {"w": jnp.asarray(d["w"]), "v": jnp.asarray(d["v"])}

    def f(q, x):
        return jnp.tanh(x @ q["w"]) @ q["v"]

    for kind in ("sparse", "rademacher", "gaussian"):
        mine = jc.project_gradients(f, p, jnp.asarray(d["x"]), jc.random_projection(jax.random.key(5), 16, kind))
        assert mine.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(mine), child[kind], err_msg=kind)


def test_one_key_one_gaussian_projection_whatever_the_params_dtype():
    """Gaussian rows are drawn in float32 and cast to the params' dtype: float64 params get the float32 params'
    rows exactly, bfloat16 ones those rows rounded (they were drawn in each dtype: another projection per dtype,
    and bfloat16-quantized normals)."""
    import ml_dtypes

    proj = jc.random_projection(jax.random.key(4), 32, "gaussian")
    g = np.random.default_rng(1)
    p32 = {
        "w": jnp.asarray(g.standard_normal((3, 6)), jnp.float32),
        "v": jnp.asarray(g.standard_normal(4), jnp.float32),
    }
    rows = {
        dt: proj.rows(jax.tree.map(lambda a, dt=dt: a.astype(dt), p32), jnp.arange(5))
        for dt in ("float32", "float64", "bfloat16")
    }
    for leaf in ("w", "v"):
        r32 = np.asarray(rows["float32"][leaf])
        assert rows["float64"][leaf].dtype == jnp.float64 and rows["bfloat16"][leaf].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(rows["float64"][leaf]), r32.astype(np.float64))
        np.testing.assert_array_equal(np.asarray(rows["bfloat16"][leaf]), r32.astype(ml_dtypes.bfloat16))
        assert abs(np.std(r32) * np.sqrt(32) - 1) < 0.2  # entries N(0, 1/k)


def test_bfloat16_features_stored_as_float32(tmp_path):
    """A bfloat16 model's features go to disk (the .npy format has no bfloat16) as float32, the same values."""
    p16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), P)
    proj = jc.structured_projection(jax.random.key(6), 8)
    mem = jc.project_gradients(F, p16, X.astype(jnp.bfloat16), proj, block_size=BS)
    assert mem.dtype == jnp.bfloat16
    for _ in range(2):  # written, then reopened and verified against the checksums
        got = jc.project_gradients(F, p16, X.astype(jnp.bfloat16), proj, block_size=BS, path=tmp_path)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(mem.astype(jnp.float32)))


def test_resume_keeps_the_stored_block_size(tmp_path, ref):
    """The automatic block size follows the memory free at the time: a resumed call without block_size continues
    with the blocks the store was begun with; an explicit other block size is refused with the one to pass."""
    with pytest.warns(RuntimeWarning, match="not written yet"):
        _run(tmp_path, 0)  # blocks 0 and 2 of 4, in blocks of 3
    with pytest.raises(ValueError, match="begun with block_size=3"):
        jc.project_gradients(F, P, X, PROJ, block_size=4, path=tmp_path, process_index=1, process_count=2)
    got = jc.project_gradients(F, P, X, PROJ, path=tmp_path, process_index=1, process_count=2)
    np.testing.assert_array_equal(got, ref)
    assert json.loads((tmp_path / "state.json").read_text())["block_size"] == BS


def _sqrt_model(q, x):
    """Finite everywhere, but its gradient in ``a`` is not finite where ``x[:, 0] = 0`` (sqrt's derivative at 0)."""
    return jnp.sqrt(q["a"] * x[:, :1] ** 2) + x @ q["w"]


def test_nonfinite_gradients_raise_and_are_never_stored(tmp_path):
    """Finite params and inputs, a model whose gradients are NaN at two points: FloatingPointError naming them, in
    memory and with path= (no block recorded for them, nothing assembled)."""
    p = {"a": jnp.ones((1, 1)), "w": jax.random.normal(jax.random.key(0), (5, 3))}
    x = X.at[4, 0].set(0.0).at[7, 0].set(0.0)
    proj = jc.random_projection(jax.random.key(2), 8)
    with pytest.raises(FloatingPointError, match=r"x points \[4, 7\]"):
        jc.project_gradients(_sqrt_model, p, x, proj, block_size=BS)
    with pytest.raises(FloatingPointError, match=r"x points \[4\]"):
        jc.project_gradients(_sqrt_model, p, x, proj, block_size=BS, path=tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted(state["blocks"]) == ["0"] and not (tmp_path / "features.npy").exists()
    ok = jc.project_gradients(_sqrt_model, p, X, proj, block_size=BS)  # the same model where it is finite
    assert bool(jnp.all(jnp.isfinite(ok)))


def test_store_arguments_and_other_projections(tmp_path):
    """path= must be a directory; yes/no options are booleans; the Kronecker projection has a store too."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        jc.project_gradients(F, P, X, PROJ, path=tmp_path / "afile")
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        jc.project_gradients(F, P, X, PROJ, path=tmp_path / "s", overwrite="yes")
    with pytest.raises(TypeError, match="summed must be True or False"):
        jc.project_gradients(F, P, X, PROJ, summed="no")
    kron = jc.kronecker_projection(jax.random.key(7), 2, 2)
    got = jc.project_gradients(F, P, X, kron, block_size=BS, path=tmp_path / "k")
    np.testing.assert_array_equal(got, jc.project_gradients(F, P, X, kron, block_size=BS))
    with pytest.raises(ValueError, match="fingerprint"):
        jc.project_gradients(
            F, P, X, jc.kronecker_projection(jax.random.key(7), 2, 3), block_size=BS, path=tmp_path / "k"
        )
