"""Multi-process jobs on localhost (CPU): ``jax.distributed`` over gloo with 2 CPU devices per process, and an array
job without JAX's runtime (``process_index=``/``process_count=``). Each job runs tests/_distributed_worker.py (the
README's multi-host recipe) in 2 subprocesses, each bounded by a 300 s timeout per mode: a bound against hangs (a gloo
rendezvous that never completes), with room for a loaded machine (the seeds job took 2 min at load 12 on 2 cores).
The three ``jax.distributed`` modes (sharded, disk, seeds) run as one job (the module's ``gloo_job`` fixture), which
starts Python, JAX and the rendezvous once for the three tests that check its outputs.

Oracles: the float64 forward-mode Jacobian kernels of ntk_models (independent of the package) for ``sharded``
(close), a one-process ``kernel_to_disk`` run in this process for the shared-path stores (bit-identical), and
one-process runs of ``ensemble_alpha_hat`` and ``lwr.train`` (same keys) for seeds and candidates (bit-identical),
and a one-process ``fit_kglm`` (to the solver tolerance).
"""

import json
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from ntk_models import mlp, oracle_kernels

import jaxcompare as jc

HERE = Path(__file__).parent
TIMEOUT = 300
TOL = dict(rtol=1e-10, atol=1e-10)


def _has_gloo() -> bool:
    from jax._src import lib

    return hasattr(getattr(lib, "_jax", None), "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(
    not _has_gloo(),
    reason="this jaxlib has no gloo CPU collectives "
    "(jax_cpu_collectives_implementation='gloo'), needed for jax.distributed on CPU",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_job(modes: str, outdir: Path, nproc: int = 2) -> None:
    """Run the worker for the comma-separated ``modes`` in ``nproc`` processes; each must report every mode done."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        JAX_PLATFORMS="cpu",
        JAXCOMPARE_PROGRESS="0",
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_distributed_worker.py"), modes, str(i), str(nproc), port, str(outdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(nproc)
    ]
    logs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT * len(modes.split(",")))
            logs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (rc, out, err) in enumerate(logs):
        done = all(f"WORKER-OK {mode} {i}" in out for mode in modes.split(","))
        assert rc == 0 and done, f"process {i} of the {modes} job failed:\n{out[-1000:]}\n{err[-4000:]}"


@pytest.fixture(scope="module")
def gloo_job(tmp_path_factory):
    """The sharded, disk and seeds modes in one 2-process jax.distributed job; the directory of its outputs."""
    outdir = tmp_path_factory.mktemp("gloo_job")
    _run_job("sharded,disk,seeds", outdir)
    return outdir


def _data():
    f, p = mlp(jax.random.key(0))
    return f, p, jax.random.normal(jax.random.key(1), (16, 5)), jax.random.normal(jax.random.key(2), (6, 5))


@needs_gloo
def test_sharded_two_processes(gloo_job):
    """Every kernel/argument combination, rows over 4 devices of 2 processes: gathered == the oracle on both."""
    f, p, x, x2 = _data()
    o11, o12 = oracle_kernels(f, p, x, x), oracle_kernels(f, p, x, x2)
    proj = jc.random_projection(jax.random.key(3), 64)
    want = dict(
        trntk=o11["trntk"],
        trntk_x2=o12["trntk"],
        full=o11["full"],
        projected=np.asarray(jc.trace_ntk(f, projection=proj)(p, x)),
    )  # one-process run (projection)
    for pid in (0, 1):
        got = np.load(gloo_job / f"sharded.{pid}.npz")
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, **TOL, err_msg=f"{name}, process {pid}")
        odd = got["trntk_odd"]
        assert odd.shape == (16, 13) and np.all(odd[13:] == 0)
        np.testing.assert_allclose(odd[:13], o11["trntk"][:13, :13], **TOL)
        np.testing.assert_allclose(got["save_rows"], o11["trntk"][:13, :13], **TOL)


def _share(tmp_path, pid):
    return set(json.loads((tmp_path / f"tiles.{pid}.json").read_text()))


@needs_gloo
def test_kernel_to_disk_two_processes_shared_path(gloo_job, tmp_path):
    """jax.distributed: disjoint shares (tile t -> process t mod 2), result bit-identical to one process; the same
    for ``project_gradients(path=)`` (block b -> process b mod 2)."""
    f, p, x, _ = _data()
    one = np.array(jc.kernel_to_disk(jc.trace_ntk(f), p, x, path=tmp_path / "one", block_size=3, progress_bar=False))
    n_tiles = 21  # 6 blocks of 3 rows: tiles on and above the diagonal
    s0, s1 = _share(gloo_job, 0), _share(gloo_job, 1)
    assert s0 == set(range(0, n_tiles, 2)) and s1 == set(range(1, n_tiles, 2))
    for pid in (0, 1):
        assert np.array_equal(np.load(gloo_job / f"disk.{pid}.npz")["kernel"], one)
    assert np.array_equal(np.load(gloo_job / "store" / "kernel.npy"), one)
    np.testing.assert_allclose(one, oracle_kernels(f, p, x, x)["trntk"], **TOL)
    # project_gradients(path=): blocks {0, 2, 4} and {1, 3, 5}, features bit-identical to one process in memory
    phi = np.asarray(jc.project_gradients(f, p, x, jc.random_projection(jax.random.key(3), 8), block_size=3))
    feats = gloo_job / "features"
    for pid, ledger in enumerate(("state.json", "state.1.json")):
        assert set(map(int, json.loads((feats / ledger).read_text())["blocks"])) == set(range(pid, 6, 2))
        assert np.array_equal(np.load(gloo_job / f"disk.{pid}.npz")["features"], phi)
    assert np.array_equal(np.load(feats / "features.npy"), phi)


def test_array_job_without_runtime(tmp_path):
    """Two plain processes with process_index=/process_count= on one path, at the same time: disjoint shares of at
    most 55% each, the union all tiles, the kernel bit-identical to one process; then a rerun of one task alone
    (its ledger removed: "it died") recomputes only its share."""
    _run_job("array", tmp_path)
    f, p, x, _ = _data()
    k = jc.trace_ntk(f)
    one = np.array(jc.kernel_to_disk(k, p, x, path=tmp_path / "one", block_size=3, progress_bar=False))
    s0, s1 = _share(tmp_path, 0), _share(tmp_path, 1)
    assert not s0 & s1 and s0 | s1 == set(range(21)) and max(len(s0), len(s1)) <= 0.55 * 21
    store = tmp_path / "store"
    assert np.array_equal(np.load(store / "kernel.npy"), one)
    # task 1 "died" before recording anything: its ledger is gone and its tiles are zero. Task 0 rerun alone has
    # nothing to do (and says that tiles are missing); task 1 rerun alone recomputes exactly its share.
    (store / "state.1.json").unlink()
    pairs = [(i, j) for i in range(6) for j in range(i, 6)]
    mm = np.load(store / "kernel.npy", mmap_mode="r+")
    for t in s1:
        i, j = pairs[t]
        mm[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] = 0
        mm[3 * j : 3 * j + 3, 3 * i : 3 * i + 3] = 0
    mm.flush()
    del mm
    with pytest.warns(RuntimeWarning, match="not written yet"):
        jc.kernel_to_disk(k, p, x, path=store, block_size=3, progress_bar=False, process_index=0, process_count=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = jc.kernel_to_disk(
            k, p, x, path=store, block_size=3, progress_bar=False, process_index=1, process_count=2
        )
    assert np.array_equal(again, one) and _share(tmp_path, 1) == s1
    assert set(json.loads((store / "state.1.json").read_text())["done"]) == s1
    with pytest.raises(ValueError, match="process_index and process_count go together"):
        jc.kernel_to_disk(k, p, x, path=store, block_size=3, process_index=0)
    with pytest.raises(ValueError, match="process_index must be <= 1"):
        jc.kernel_to_disk(k, p, x, path=store, block_size=3, process_index=2, process_count=2)


@needs_gloo
def test_seeds_and_candidates_two_processes(gloo_job):
    """Same key, same result across process counts: ``ensemble_alpha_hat`` on scores whose rows live on two processes
    (6 candidates padded to 8, two per device, against all 6 on one device here) and ``jit(vmap(lwr.train))`` over 4
    seeds sharded one per device (default eig backend: "jax" on several devices), on a mesh with ``Auto`` axes and on
    one with ``Explicit`` axes, are bit-identical to one process; ``fit_kglm`` on a kernel whose rows live on two
    processes, and ``jit(vmap(fit_kglm))`` over problems sharded over the 4 devices, match one-process fits to 1e-10;
    value checks of arrays spanning processes run on the devices and give the one-process messages."""
    from jaxcompare import lwr

    scores = np.asarray(jax.random.normal(jax.random.key(4), (12, 64)))
    res = jc.ensemble_alpha_hat(
        jax.random.key(5), scores, candidates=np.arange(6), reference=np.arange(6, 12), n_boot=4
    )
    cfg = lwr.LWRConfig(n=24, d=8, h=12)
    data = lwr.sample_data(jax.random.key(6), cfg)

    kw = dict(lr=0.2 * cfg.n, steps=6, record_every=3, throw=False, eig_backend="jax")  # the job's default

    def run(k):  # one device here, where the default backend is "lapack"; the job's 4 devices default to "jax"
        return lwr.train(k, lwr.init_params(k, cfg), data, cfg, **kw)

    # one seed per program, as each of the 4 devices of the job holds one: XLA's CPU matmuls round differently for
    # different batch sizes (a vmap over 4 seeds on one device differs from 4 vmaps over 1 seed by ~1e-6 in float32)
    keys = jax.random.split(jax.random.key(7), 4)
    one_seed = jax.jit(jax.vmap(run))  # one compiled program for the 4 calls (a new jit per call compiled 4 times)
    parts = [one_seed(keys[i : i + 1]) for i in range(4)]
    tr = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    exact = dict(ens_boot=res.boot, ens_ks=res.ks, lwr_eig=tr.history.eig_ntk, lwr_W=tr.params.W, lwr_loss=tr.losses)
    exact.update(lwr_explicit_eig=tr.history.eig_ntk, lwr_explicit_W=tr.params.W)  # Explicit mesh axes: the same
    # fit_kglm on a row-sharded kernel: the sharded matmuls sum in another order, so the two L-BFGS paths differ by
    # float64 rounding (the same iterations, stopped at max|grad| <= 1e-7, 20x above where rounding stalls this fit);
    # observed differences <= 5e-15 (4 devices of one process; 2 processes x 2 devices), hence the tolerance 1e-10.
    # The same bound for jit(vmap(fit_kglm)) over 4 problems sharded one per device (other batch sizes round
    # differently). One vmapped program here gives all five references: the row-sharded problem and the 4.
    F = np.asarray(jax.random.normal(jax.random.key(8), (16, 6)))
    G = np.asarray(jax.random.normal(jax.random.key(9), (4, 16, 6)))
    Ks = np.einsum("bik,bjk->bij", np.concatenate([F[None], G]), np.concatenate([F[None], G])) / 6
    ys = np.argmax(np.concatenate([F[None], G])[..., :3], axis=-1)
    m = jax.vmap(lambda K, y: jc.fit_kglm(K, y, n_classes=3, l2=1e-2, tol=1e-7))(Ks, ys)
    assert np.all(np.asarray(m.result) == int(jc.Result.successful))
    W0, b0 = m.W[0], m.b[0]
    close = dict(kglm_W=W0, kglm_b=b0, kglm_logits=Ks[0] @ np.asarray(W0).T + np.asarray(b0), kglm_vmap_W=m.W[1:])
    for pid in (0, 1):
        got = np.load(gloo_job / f"seeds.{pid}.npz")
        for name, want in exact.items():
            np.testing.assert_array_equal(got[name], np.asarray(want), err_msg=f"{name}, process {pid}")
        for name, want in close.items():
            np.testing.assert_allclose(got[name], np.asarray(want), rtol=0, atol=1e-10, err_msg=f"{name}, {pid}")
        assert np.all(got["kglm_vmap_result"] == int(jc.Result.successful)), got["kglm_vmap_result"]
        assert got["msgs"].tolist() == [
            "scores must be finite, but it has 1 NaN and 0 infinite entries (shape (12, 64)); remove or impute them "
            "first.",
            "ok",
            "labels must lie in [0, 5); found values from 0 to 7.",
            "labels must hold integer class labels; got non-integer or non-finite values.",
            "kernel_train_train must be finite, but it has 0 NaN and 1 infinite entries (shape (16, 16)); remove or "
            "impute them first.",
        ], f"process {pid}"


def _readme_code(title: str) -> str:
    """The first code block after the bold paragraph title ``**title**`` of the README."""
    text = (HERE.parent / "README.md").read_text()
    start = text.index("```", text.index(f"**{title}**"))
    start = text.index("\n", start) + 1
    return text[start : text.index("```", start)]


@pytest.mark.parametrize("title", ["Multi-host recipe", "Seeds and candidates across processes"])
def test_readme_recipes_are_what_the_worker_runs(title):
    """Every ``jc.``/``jax.``/``lwr.`` function the README's recipe calls is called by the worker of these tests, and
    its ``jax.config.update`` lines are the worker's, verbatim (the README names this file as what it runs)."""
    code, worker = _readme_code(title), (HERE / "_distributed_worker.py").read_text()
    calls = set(re.findall(r"\b((?:jc|jax|lwr)(?:\.\w+)+)\(", code))
    assert calls, f"no calls found in the README's {title!r} block"
    missing = sorted(c for c in calls if f"{c}(" not in worker)
    assert not missing, f"the README's {title!r} calls {missing}, which tests/_distributed_worker.py does not run"
    for line in code.splitlines():
        if "jax.config.update" in line:
            assert line.split("#")[0].strip() in worker, line
