"""jc.kernel_to_disk: equals the in-memory kernel (oracle: float64 forward-mode Jacobians / the kernel function
itself), resumes after a SIGKILL to the bit-identical kernel, refuses to resume with different inputs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc

TOL64 = dict(rtol=1e-10, atol=1e-10)


def _data(n1=11, n2=4):
    f, p = mlp(jax.random.key(0))
    return f, p, jax.random.normal(jax.random.key(1), (n1, 5)), jax.random.normal(jax.random.key(2), (n2, 5))


def test_matches_in_memory_kernels(tmp_path):
    f, p, x1, x2 = _data()
    o11, o12 = oracle_kernels(f, p, x1, x1), oracle_kernels(f, p, x1, x2)
    k = jc.kernel_to_disk(jc.trace_ntk(f), p, x1, path=tmp_path / "a", block_size=4, progress_bar=False)
    assert isinstance(k, np.memmap) and k.shape == (11, 11)
    np.testing.assert_allclose(k, o11["trntk"], **TOL64)
    np.testing.assert_allclose(np.load(tmp_path / "a" / "kernel.npy"), o11["trntk"], **TOL64)
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["done"] == list(range(6))  # 3 blocks: the 6 tiles on and above the diagonal
    k = jc.kernel_to_disk(jc.trace_ntk(f), p, x1, x2, path=tmp_path / "b", block_size=3, progress_bar=False)
    np.testing.assert_allclose(k, o12["trntk"], **TOL64)
    # trailing class axes swap in mirrored tiles
    e = jc.kernel_to_disk(jc.empirical_ntk(f), p, x1, path=tmp_path / "c", block_size=4, progress_bar=False)
    np.testing.assert_allclose(e, o11["full"], **TOL64)

    # a projected kernel (its record holds a key: compared by identity, not hashed)
    kp = jc.trace_ntk(f, projection=jc.random_projection(jax.random.key(3), 64))
    np.testing.assert_allclose(
        jc.kernel_to_disk(kp, p, x1, path=tmp_path / "p", block_size=4, progress_bar=False), kp(p, x1), **TOL64
    )

    def rbf(q, a, b=None):  # a user's kernel without a spec
        return jnp.exp(-q * jnp.sum((a[:, None] - (a if b is None else b)[None]) ** 2, -1))

    np.testing.assert_allclose(
        jc.kernel_to_disk(rbf, 0.3, x1, path=tmp_path / "d", block_size=5, progress_bar=False), rbf(0.3, x1), **TOL64
    )


def test_refuses_other_inputs_and_reopens_finished_run(tmp_path):
    f, p, x1, _ = _data(6)
    k = jc.trace_ntk(f)
    a = np.array(jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4, progress_bar=False))
    mtime = (tmp_path / "kernel.npy").stat().st_mtime_ns
    b = jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4, progress_bar=False)  # nothing left to do
    assert np.array_equal(a, b) and (tmp_path / "kernel.npy").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different inputs"):
        jc.kernel_to_disk(k, p, x1.at[0, 0].add(1.0), path=tmp_path, block_size=4)
    with pytest.raises(ValueError, match="different inputs"):
        jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=3)
    with pytest.raises(ValueError, match="different inputs"):
        jc.kernel_to_disk(jc.pseudo_ntk(f), p, x1, path=tmp_path, block_size=4)
    c = jc.kernel_to_disk(
        jc.trace_ntk(f, normalize=False), p, x1, path=tmp_path, block_size=4, overwrite=True, progress_bar=False
    )
    np.testing.assert_allclose(c, oracle_kernels(f, p, x1, x1)["trntk0"], **TOL64)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        jc.kernel_to_disk(k, p, x1, path=tmp_path / "z", block_size=0)
    with pytest.raises(TypeError, match="path"):
        jc.kernel_to_disk(k, p, x1, path=None, block_size=2)
    with pytest.raises(TypeError, match="eagerly"):
        jax.jit(lambda q: jc.kernel_to_disk(k, q, x1, path=tmp_path / "j", block_size=2))(p)


_CHILD = textwrap.dedent(
    """
    import sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import jaxcompare as jc
    import jaxcompare.ntk._ooc as ooc
    from ntk_models import mlp

    real = ooc.progress

    def slow(it, **kw):  # slow the run down so that the parent can kill it between tiles
        for item in real(it, **kw):
            yield item
            time.sleep(0.3)

    ooc.progress = slow
    f, p = mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (40, 5))
    jc.kernel_to_disk(jc.trace_ntk(f), p, x, path=sys.argv[1], block_size=4, progress_bar=False)
    print("CHILD-FINISHED")
    """
)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_kernel(tmp_path):
    """SIGKILL a run after a few tiles, resume here, compare bit for bit with an uninterrupted run."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    run = tmp_path / "run"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        JAXCOMPARE_PROGRESS="0",
    )
    child = subprocess.Popen(
        [sys.executable, str(script), str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    n_total = 55  # 10 blocks of 4 -> 55 tiles on and above the diagonal
    done = []
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if (run / "state.json").exists():
                try:
                    done = json.loads((run / "state.json").read_text())["done"]
                except (json.JSONDecodeError, KeyError):
                    done = []
                if len(done) >= 3:
                    break
            if child.poll() is not None:
                break
            time.sleep(0.05)
        assert child.poll() is None, (
            "the child finished or died before it could be killed: " + child.stderr.read().decode()[-2000:]
        )
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    done = json.loads((run / "state.json").read_text())["done"]
    assert 3 <= len(done) < n_total
    f, p = mlp(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (40, 5))
    resumed = np.array(jc.kernel_to_disk(jc.trace_ntk(f), p, x, path=run, block_size=4, progress_bar=False))
    assert len(json.loads((run / "state.json").read_text())["done"]) == n_total
    fresh = np.array(
        jc.kernel_to_disk(jc.trace_ntk(f), p, x, path=tmp_path / "fresh", block_size=4, progress_bar=False)
    )
    assert np.array_equal(resumed, fresh)
    np.testing.assert_allclose(resumed, oracle_kernels(f, p, x, x)["trntk"], **TOL64)


def test_progress_counts_resumed_tiles_and_norms_durable(tmp_path, monkeypatch):
    """A resumed run's bar starts at the tiles already done (3/6, not 0/3) and the norm phase has its own bar;
    durable=True (fsync per tile) gives the same kernel."""
    import jaxcompare.ntk._ooc as ooc

    f, p, x1, _ = _data(11)
    k = jc.trace_ntk(f)
    want = oracle_kernels(f, p, x1, x1)["trntk"]
    np.testing.assert_allclose(
        jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4, durable=True, progress_bar=False), want, **TOL64
    )
    state = json.loads((tmp_path / "state.json").read_text())
    state["done"] = [1, 3, 5]  # tiles 0, 2, 4 "not yet written"
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / "norms.npy").unlink()
    bars = []
    real = ooc.progress

    def spy(it, *, total, desc, enabled):
        items = list(it)
        bars.append((desc, total, items))
        return real(items, total=total, desc=desc, enabled=False)

    monkeypatch.setattr(ooc, "progress", spy)
    with pytest.warns(RuntimeWarning, match="norms.npy is missing"):  # recorded norms lost: never silently
        np.testing.assert_allclose(jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4), want, **TOL64)
    (nd, nt, norm_items), (td, tt, tiles) = bars
    assert "norms" in nd and nt == 3 and len(norm_items) == 3  # 3 blocks of x1 (x2=None)
    assert "tiles" in td and tt == 6 and tiles[:3] == [1, 3, 5] and sorted(tiles[3:]) == [0, 2, 4]


def test_writer_thread_error_is_raised_and_the_run_resumes(tmp_path, monkeypatch):
    """A tile that cannot be recorded (disk full, on the writer thread) raises in the caller, not a hang or a
    silent success; the ledger keeps exactly the tiles recorded before it, and a rerun completes the kernel."""
    import jaxcompare.ntk._ooc_ledger as ledger_mod

    f, p, x1, _ = _data(11)
    k = jc.trace_ntk(f)
    real, calls = ledger_mod.atomic_json, []

    def full_disk(path, obj, durable=False):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device (simulated)")
        real(path, obj, durable)

    monkeypatch.setattr(ledger_mod, "atomic_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4, progress_bar=False)
    assert json.loads((tmp_path / "state.json").read_text())["done"] == [0, 1]  # the two tiles recorded first
    monkeypatch.setattr(ledger_mod, "atomic_json", real)
    np.testing.assert_allclose(
        jc.kernel_to_disk(k, p, x1, path=tmp_path, block_size=4, progress_bar=False),
        oracle_kernels(f, p, x1, x1)["trntk"],
        **TOL64,
    )
