"""One process of the multi-process jobs of tests/test_distributed.py (the README's multi-host recipe, verbatim).

    python _distributed_worker.py MODE[,MODE...] PROCESS_ID NUM_PROCESSES PORT OUTDIR

MODE ``sharded``: ``jax.distributed`` over gloo, 2 CPU devices per process; ``jc.sharded`` of several kernels,
gathered with ``jc.gather`` and written with ``jc.save_rows``. MODE ``disk``: ``jax.distributed``; every process calls
``jc.kernel_to_disk`` and ``jc.project_gradients(path=)`` on shared paths. MODE ``array``: no JAX runtime;
``process_index=``/``process_count=``.
MODE ``seeds``: ``jax.distributed``; ``ensemble_alpha_hat`` on scores whose rows live on different processes,
``jit(vmap(...))`` of ``lwr.train`` over seeds sharded over all devices (a mesh with ``Auto`` axes, then one with
``Explicit`` axes), ``fit_kglm`` on a kernel whose rows live on different processes and ``jit(vmap(fit_kglm))`` over
problems sharded over all devices, and value checks of arrays that span processes.
Several ``jax.distributed`` modes may be given at once (``sharded,disk,seeds``): they run one after the other in one
job, which starts Python, JAX and the rendezvous once. Each process writes what it computed to OUTDIR
(``MODE.PROCESS_ID.npz`` per mode) for the test to compare with a one-process run.
"""

import json
import os
import sys

modes, pid, nproc, port, outdir = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
assert set(modes) <= {"sharded", "disk", "seeds"} or modes == ["array"], f"unknown or mixed modes {modes}"
distributed = modes != ["array"]
if distributed:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"  # first

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
if distributed:
    # --- the multi-host recipe: the same script on every host -----------------------------------------------------
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402
from ntk_models import mlp  # noqa: E402

import jaxcompare as jc  # noqa: E402

f, params = mlp(jax.random.key(0))  # the same params and data on every process (same keys)
x = jax.random.normal(jax.random.key(1), (16, 5))
x2 = jax.random.normal(jax.random.key(2), (6, 5))


def _sharded(mode: str) -> dict:
    """MODE ``sharded``."""
    out = {}
    assert jax.process_count() == nproc and jax.device_count() == 2 * nproc, jax.devices()
    proj = jc.random_projection(jax.random.key(3), 64)
    cases = {
        "trntk": (jc.trace_ntk(f), (x,), {}),
        "trntk_x2": (jc.trace_ntk(f), (x, x2), {}),
        "trntk_odd": (jc.trace_ntk(f), (x[:13],), dict(pad=True)),
        "full": (jc.empirical_ntk(f), (x,), {}),
        "projected": (jc.trace_ntk(f, projection=proj), (x,), {}),
    }
    for name, (kfn, args, kw) in cases.items():
        K = jc.sharded(kfn, block_size=4, **kw)(params, *args)  # rows sharded over all 2·nproc devices
        assert len(K.sharding.device_set) == 2 * nproc and not K.sharding.is_fully_replicated, (name, K.sharding)
        local = {s.index[0].start for s in K.addressable_shards}
        assert len(local) == 2, (name, local)  # this process holds the rows of its own two devices only
        out[name] = jc.gather(K)  # collective: every process calls it
        if name == "trntk_odd":  # each process writes its own rows (no gathering), padding rows dropped
            out["save_rows"] = np.array(jc.save_rows(K, os.path.join(outdir, "rows.npy"), rows=13))
    return out


def _disk(mode: str) -> dict:
    """MODEs ``disk`` and ``array``."""
    out = {}
    kw = dict(process_index=pid, process_count=nproc) if mode == "array" else {}
    K = jc.kernel_to_disk(
        jc.trace_ntk(f), params, x, path=os.path.join(outdir, "store"), block_size=3, progress_bar=False, **kw
    )
    ledger = os.path.join(outdir, "store", "state.json" if pid == 0 else f"state.{pid}.json")
    with open(ledger) as fh:
        json.dump(json.load(fh)["done"], open(os.path.join(outdir, f"tiles.{pid}.json"), "w"))
    if mode == "disk":
        out["kernel"] = np.array(K)  # complete on every process: kernel_to_disk ends with a barrier
        proj = jc.random_projection(jax.random.key(3), 8)  # block b of 6 to process b mod 2, then one assembles
        phi = jc.project_gradients(f, params, x, proj, block_size=3, path=os.path.join(outdir, "features"))
        out["features"] = np.array(phi)  # complete on every process: a barrier before the assembly
    return out


def _seeds(mode: str) -> dict:
    """MODE ``seeds``: seeds and candidates across processes (the README's recipe)."""
    out = {}
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jaxcompare import lwr

    rows = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec("d"))  # all devices of all processes
    scores = np.asarray(jax.random.normal(jax.random.key(4), (12, 64)))  # 12 models; process p trained rows 6p..6p+5
    mine = scores[6 * pid : 6 * pid + 6]
    S = jax.make_array_from_process_local_data(rows, mine)  # global (12, 64), no process holds all of it
    assert not S.is_fully_addressable
    res = jc.ensemble_alpha_hat(jax.random.key(5), S, candidates=np.arange(6), reference=np.arange(6, 12), n_boot=4)
    out.update(ens_boot=np.asarray(res.boot), ens_ks=np.asarray(res.ks))  # replicated: readable on every process
    cfg = lwr.LWRConfig(n=24, d=8, h=12)
    data = lwr.sample_data(jax.random.key(6), cfg)

    def run(k):
        return lwr.train(k, lwr.init_params(k, cfg), data, cfg, lr=0.2 * cfg.n, steps=6, record_every=3, throw=False)

    keys = jax.jit(lambda k: jax.random.split(k, 4), out_shardings=rows)(jax.random.key(7))  # one seed per device
    tr = jax.jit(jax.vmap(run))(keys)  # eig_backend "jax" by default here: each device decomposes its own seeds
    assert not tr.params.W.is_fully_addressable
    out.update(lwr_eig=jc.gather(tr.history.eig_ntk), lwr_W=jc.gather(tr.params.W), lwr_loss=jc.gather(tr.losses))
    # the same on a mesh with Explicit axes (the default of jax.make_mesh in JAX 0.10), inside jax.set_mesh
    mesh = jax.make_mesh((jax.device_count(),), ("seeds",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        keys = jax.jit(lambda k: jax.random.split(k, 4), out_shardings=PartitionSpec("seeds"))(jax.random.key(7))
        tr = jax.jit(jax.vmap(run))(keys)
    assert tr.params.W.sharding.spec[0] == "seeds", tr.params.W.sharding
    out.update(lwr_explicit_eig=jc.gather(tr.history.eig_ntk), lwr_explicit_W=jc.gather(tr.params.W))
    # fit_kglm on a kernel whose rows live on different processes (as jc.sharded leaves it): the model is replicated
    F = np.asarray(jax.random.normal(jax.random.key(8), (16, 6)))
    Kk, yk = F @ F.T / 6, np.argmax(F[:, :3], axis=1)  # a linear kernel, 3 classes
    Kg = jax.make_array_from_process_local_data(rows, Kk[8 * pid : 8 * pid + 8])
    model = jc.fit_kglm(Kg, yk, l2=1e-2, tol=1e-7)
    out.update(kglm_W=np.asarray(model.W), kglm_b=np.asarray(model.b), kglm_logits=jc.gather(jc.kglm_logits(model, Kg)))
    # jit(vmap(fit_kglm)) over 4 problems sharded one per device: each device fits its own
    G = np.asarray(jax.random.normal(jax.random.key(9), (4, 16, 6)))
    Kb, yb = np.einsum("bik,bjk->bij", G, G) / 6, np.argmax(G[..., :3], axis=-1)
    fit = jax.jit(jax.vmap(lambda K, y: jc.fit_kglm(K, y, n_classes=3, l2=1e-2, tol=1e-7)))
    mb = fit(*(jax.make_array_from_process_local_data(rows, a[2 * pid : 2 * pid + 2]) for a in (Kb, yb)))
    assert not mb.W.is_fully_addressable
    out.update(kglm_vmap_W=jc.gather(mb.W), kglm_vmap_result=jc.gather(mb.result))
    # value checks of arrays that span processes run on the devices (no host copy), with the one-process messages
    from jaxcompare._validation import check_labels

    local = mine.copy()
    local[2, 5] = np.nan if pid == 1 else local[2, 5]  # one NaN, on process 1 (global row 8)
    msgs = []
    labels = [np.arange(4.0) + 4 * pid, np.arange(4.0) + 4 * pid + 0.5 * pid]  # 0..7; then 4.5.. on process 1
    kbad = Kk[8 * pid : 8 * pid + 8].copy()
    kbad[3, 3] = np.inf if pid == 1 else kbad[3, 3]  # one inf, on process 1 (global row 11)
    for bad, check in (
        (local, lambda a: jc.ensemble_alpha_hat(jax.random.key(5), a, candidates=np.arange(6), reference=[6, 7])),
        (labels[0], lambda a: check_labels(a, "labels", 8)),  # fine
        (labels[0], lambda a: check_labels(a, "labels", 5)),
        (labels[1], lambda a: check_labels(a, "labels", 8)),
        (kbad, lambda a: jc.fit_kglm(a, yk)),
    ):
        try:
            check(jax.make_array_from_process_local_data(rows, bad))
            msgs.append("ok")
        except ValueError as e:
            msgs.append(str(e))
    out["msgs"] = np.array(msgs)
    return out


RUN = dict(sharded=_sharded, disk=_disk, array=_disk, seeds=_seeds)
for mode in modes:  # several jax.distributed modes in one job share its start-up (imports, rendezvous)
    np.savez(os.path.join(outdir, f"{mode}.{pid}.npz"), **RUN[mode](mode))
    print(f"WORKER-OK {mode} {pid}", flush=True)
